"""CheXpert v1.0 / v1.0-small (Irvin et al. 2019) as distributed: ``train.csv``, ``valid.csv`` and the JPEG tree.

``ROOT`` is the unpacked folder holding the two CSVs (``CheXpert-v1.0-small/``). A ``Path`` cell reads
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``; its first folder (the release's own name) is
dropped and the rest is found under ``ROOT``. Splits: ``train.csv`` → train; ``valid.csv`` (the radiologist-labelled
set, 200 patients, the set CheXpert's own paper reports on) → test. CheXpert's hidden test set is not distributed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from cxrdist.data.external.common import (
    ExternalPlan,
    ExternalRecord,
    check_views,
    find_source,
    labeler_value,
    read_csv,
)
from cxrdist.data.external.labelmap import CHEXPERT_OBSERVATIONS, chexpert_vector
from cxrdist.data.format import DataError

CSVS = (("train.csv", "train"), ("valid.csv", "test"))
COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS)
_PATIENT = re.compile(r"(?:^|/)patient(\d+)/(study\d+)/([^/]+)\.jpg$")


def _relative(path: str, where: str) -> str:
    parts = path.strip().split("/")
    if parts and parts[0].startswith("CheXpert-v1.0"):
        parts = parts[1:]
    rel = "/".join(parts)
    if not _PATIENT.search(rel):
        raise DataError(f"{where}: column 'Path': {path!r} is not .../patientNNNNN/studyN/<view>.jpg")
    return rel


def _row_record(row: dict[str, str], where: str, uncertain: str) -> ExternalRecord:
    rel = _relative(row["Path"], where)
    m = _PATIENT.search(rel)
    values = {obs: labeler_value(row[obs], where, obs) for obs in CHEXPERT_OBSERVATIONS}
    labels, mask = chexpert_vector(values, uncertain)
    frontal = row["Frontal/Lateral"].strip()
    if frontal not in ("Frontal", "Lateral"):
        raise DataError(f"{where}: column 'Frontal/Lateral': {frontal!r}; expected Frontal or Lateral")
    age = row["Age"].strip()
    return ExternalRecord(
        key=f"patient{m.group(1)}_{m.group(2)}_{m.group(3)}",
        image=rel,
        labels=labels,
        mask=mask,
        patient_id=f"patient{m.group(1)}",
        view=row["AP/PA"].strip() if frontal == "Frontal" else "Lateral",
        study=f"patient{m.group(1)}/{m.group(2)}",
        age=int(float(age)) if age else None,
        sex=row["Sex"].strip(),
        source_labels={k: v for k, v in values.items() if v is not None},
    )


def plan(root: Path, *, views: str = "frontal", uncertain: str = "ignore") -> ExternalPlan:
    """Read both CSVs; frontal images only unless ``views='all'`` (laterals are counted as filtered)."""
    check_views(views)
    splits: dict[str, list[ExternalRecord]] = {}
    filtered: list[dict[str, str]] = []
    sources, seen = [], {}
    for name, split in CSVS:
        path = find_source(root, name)
        sources.append(path)
        recs = [_row_record(row, f"{path}: line {line}", uncertain) for line, row in read_csv(path, COLUMNS)]
        for r in recs:
            if r.key in seen:
                raise DataError(f"{path}: image {r.image} listed twice (also in {seen[r.key]})")
            seen[r.key] = path.name
        frontal_studies = defaultdict(int)
        for r in recs:
            frontal_studies[r.study] += r.view != "Lateral"
        keep = []
        for r in recs:
            if views == "all" or r.view != "Lateral":
                keep.append(r)
                continue
            why = "lateral-only study: no frontal image" if not frontal_studies[r.study] else "lateral view"
            filtered.append({"row": f"{path.name}: {r.image}", "reason": f"{why} (--views frontal)"})
        splits[split] = keep
    return ExternalPlan(splits=splits, filtered=filtered, sources=sources)
