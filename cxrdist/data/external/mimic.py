"""MIMIC-CXR-JPG 2.x (Johnson et al. 2019) as distributed on PhysioNet.

``ROOT`` holds ``mimic-cxr-2.0.0-chexpert.csv``, ``mimic-cxr-2.0.0-metadata.csv`` and ``mimic-cxr-2.0.0-split.csv``
(each also as the release's ``.csv.gz``) and ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``. Labels are per study
(subject_id, study_id) and apply to each of its images; the view is the metadata's ``ViewPosition``; the split is
the official one (train / validate → val / test).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

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

CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
FRONTAL = ("PA", "AP")
SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}


def _int(text: str, where: str, column: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise DataError(f"{where}: column {column!r}: {text!r} is not an integer id") from None


def _study_labels(path: Path, uncertain: str) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray, dict]]:
    out = {}
    for line, row in read_csv(path, ("subject_id", "study_id", *CHEXPERT_OBSERVATIONS)):
        where = f"{path}: line {line}"
        key = (_int(row["subject_id"], where, "subject_id"), _int(row["study_id"], where, "study_id"))
        values = {obs: labeler_value(row[obs], where, obs) for obs in CHEXPERT_OBSERVATIONS}
        labels, mask = chexpert_vector(values, uncertain)
        out[key] = (labels, mask, {k: v for k, v in values.items() if v is not None})
    return out


def _splits(path: Path) -> dict[str, str]:
    out = {}
    for line, row in read_csv(path, ("dicom_id", "study_id", "subject_id", "split")):
        s = row["split"].strip()
        if s not in SPLIT_NAMES:
            raise DataError(f"{path}: line {line}: column 'split': {s!r}; expected train, validate or test")
        out[row["dicom_id"].strip()] = SPLIT_NAMES[s]
    return out


def plan(root: Path, *, views: str = "frontal", uncertain: str = "ignore") -> ExternalPlan:
    """Join the three CSVs; rows without a label row or split row are counted as filtered, as are non-frontal
    images under ``views='frontal'`` (``ViewPosition`` not PA/AP)."""
    check_views(views)
    paths = [find_source(root, n) for n in (CHEXPERT_CSV, METADATA_CSV, SPLIT_CSV)]
    labels, split_of = _study_labels(paths[0], uncertain), _splits(paths[2])
    rows = []
    for line, row in read_csv(paths[1], ("dicom_id", "subject_id", "study_id", "ViewPosition")):
        where = f"{paths[1]}: line {line}"
        dicom = row["dicom_id"].strip()
        if not dicom or "." in dicom or "/" in dicom:
            raise DataError(f"{where}: column 'dicom_id': {dicom!r} is not a DICOM id")
        subject, study = _int(row["subject_id"], where, "subject_id"), _int(row["study_id"], where, "study_id")
        rows.append((dicom, subject, study, row["ViewPosition"].strip()))
    frontal = defaultdict(int)
    for _, _subject, study, view in rows:
        frontal[study] += view in FRONTAL
    splits: dict[str, list[ExternalRecord]] = {s: [] for s in SPLIT_NAMES.values()}
    filtered: list[dict[str, str]] = []
    for dicom, subject, study, view in rows:
        skip = None
        if (subject, study) not in labels:
            skip = f"study s{study} has no row in {CHEXPERT_CSV}"
        elif dicom not in split_of:
            skip = f"not in {SPLIT_CSV}"
        elif views == "frontal" and view not in FRONTAL:
            lone = "" if frontal[study] else "; its study has no frontal image"
            skip = f"ViewPosition {view or '(blank)'} is not PA/AP (--views frontal){lone}"
        if skip:
            filtered.append({"row": f"{METADATA_CSV}: {dicom}", "reason": skip})
            continue
        lab, mask, source = labels[(subject, study)]
        splits[split_of[dicom]].append(
            ExternalRecord(
                key=dicom,
                image=f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg",
                labels=lab,
                mask=mask,
                patient_id=str(subject),
                view=view,
                study=str(study),
                source_labels=source,
            )
        )
    return ExternalPlan(splits=splits, filtered=filtered, sources=paths)
