"""External chest X-ray sets (CheXpert, MIMIC-CXR-JPG, PadChest) → the shard format, with their label maps.

``plan(dataset, root, views=..., uncertain=...)`` reads a release as distributed and returns its records per split;
the shard writer (``data/writer.py``) writes them with the NIH code path. See ``labelmap`` for the label maps.
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


def plan(dataset: str, root: Path, *, views: str = "frontal", uncertain: str = "ignore") -> ExternalPlan:
    """The records of an external release per split (errors name the file, line and column)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown external dataset {dataset!r}; choose {', '.join(DATASETS)}")
    return DATASETS[dataset](Path(root), views=views, uncertain=uncertain)
