"""External chest X-ray sets (CheXpert, MIMIC-CXR-JPG, PadChest) → the shard format, with their label maps.

``plan(dataset, root, views=..., uncertain=..., min_age=...)`` reads a release as distributed and returns its
records per split; the shard writer (``data/writer.py``) writes them with the NIH code path. See ``labelmap`` for
the label maps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cxrdist.data.external import chexpert, mimic, padchest
from cxrdist.data.external.common import ExternalPlan

DATASETS: dict[str, Callable[..., ExternalPlan]] = {
    "chexpert": chexpert.plan,
    "mimic": mimic.plan,
    "padchest": padchest.plan,
}


def plan(
    dataset: str, root: Path, *, views: str = "frontal", uncertain: str = "ignore", min_age: int | None = None
) -> ExternalPlan:
    """The records of an external release per split (errors name the file, line and column). ``min_age``: PadChest
    only (None: its default, ``padchest.MIN_AGE``; 0 keeps pediatric images)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown external dataset {dataset!r}; choose {', '.join(DATASETS)}")
    if min_age is not None and dataset != "padchest":
        raise ValueError(f"min_age applies to padchest only (its PatientBirth column), not {dataset}")
    extra = {} if min_age is None else {"min_age": min_age}
    return DATASETS[dataset](Path(root), views=views, uncertain=uncertain, **extra)
