"""PadChest (Bustos et al. 2020) as distributed: the labels CSV and 16-bit PNGs in numbered folders.

``ROOT`` holds ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (or its ``.gz``) and the images, either in
the release's folders (``ROOT/<ImageDir>/<ImageID>``) or flat (``ROOT/<ImageID>``). ``Labels`` is a list literal of
finding names (``['pleural effusion', 'cardiomegaly']``); they map to the NIH classes through
``labelmap.PADCHEST_TERMS`` and are kept verbatim in each sample's JSON. PadChest has no official split: every image
goes to ``test``. Frontal = ``Projection`` PA, AP or AP_horizontal (supine AP). Pediatric images are left out
by default as torchxrayvision's ``PC_Dataset`` does (``min_age``; see ``MIN_AGE``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import numpy as np

from cxrdist.data.external.common import ExternalPlan, ExternalRecord, check_views, find_source, read_csv
from cxrdist.data.external.labelmap import PADCHEST_EXCLUDE, padchest_vector
from cxrdist.data.format import DataError

LABELS_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
COLUMNS = ("ImageID", "ImageDir", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM", "Projection", "Labels")
FRONTAL = ("PA", "AP", "AP_horizontal")
# torchxrayvision's PC_Dataset keeps the rows with 2019 − PatientBirth > 10 ("Filter out age < 10 (paper published
# 2019)"): the age is counted to the paper's year, not to StudyDate_DICOM, and a blank PatientBirth is dropped too.
MIN_AGE = 10
AGE_YEAR = 2019


def parse_findings(cell: str, where: str) -> list[str] | None:
    """A ``Labels`` cell → its findings, stripped and lower case (None for a blank/NaN cell)."""
    text = cell.strip()
    if not text or text.lower() == "nan":
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: column 'Labels': {cell!r} is not a list of finding names like ['normal']")
    return [v.strip().lower() for v in value if v.strip()]


def _age(birth: str, study_date: str) -> int | None:
    try:
        return int(study_date.strip()[:4]) - int(float(birth))
    except ValueError:
        return None


def pediatric_reason(birth: str, min_age: int, where: str) -> str | None:
    """The filter reason of a row whose ``PatientBirth`` makes it pediatric under ``min_age`` (torchxrayvision's rule:
    ``AGE_YEAR`` − PatientBirth ≤ min_age, or PatientBirth blank), None to keep it; ``min_age`` 0 keeps every row.
    A PatientBirth that is not a year is a one-line error naming ``where``."""
    text = birth.strip()
    blank = not text or text.lower() == "nan"
    try:
        year = None if blank else float(text)
    except ValueError:
        year = None
    if not blank and year is None:
        raise DataError(f"{where}: column 'PatientBirth': {birth!r} is not a birth year like 1946.0")
    if min_age <= 0:
        return None
    if year is None:
        return f"PatientBirth blank: age unknown (--min-age {min_age}; 0 keeps it)"
    if AGE_YEAR - year <= min_age:
        return f"pediatric: {AGE_YEAR} - PatientBirth <= {min_age} (--min-age {min_age}; 0 keeps it)"
    return None


def _image_path(root: Path, image_dir: str, image_id: str) -> str:
    folder = image_dir.strip()
    if folder and folder.lower() != "nan":
        folder = str(int(float(folder))) if folder.replace(".", "", 1).isdigit() else folder
        if (root / folder / image_id).is_file() or not (root / image_id).is_file():
            return f"{folder}/{image_id}"
    return image_id


def plan(root: Path, *, views: str = "frontal", uncertain: str = "ignore", min_age: int = MIN_AGE) -> ExternalPlan:
    """Read the labels CSV; blank ``Labels``, 'exclude'/'suboptimal study', pediatric (``min_age``, 0: none) and (by
    default) non-frontal images are counted as filtered, with that reason, in that order. ``uncertain`` does not
    apply (PadChest has no uncertain labels)."""
    del uncertain
    check_views(views)
    if min_age < 0:
        raise ValueError(f"min_age must be ≥ 0 (0 keeps pediatric images), got {min_age}")
    path = find_source(root, LABELS_CSV)
    rows = []
    for line, row in read_csv(path, COLUMNS):
        where = f"{path}: line {line}"
        image_id = row["ImageID"].strip()
        if not image_id.lower().endswith(".png") or "/" in image_id or "." in image_id[:-4]:
            raise DataError(f"{where}: column 'ImageID': {image_id!r} is not a PadChest PNG name")
        young = pediatric_reason(row["PatientBirth"], min_age, where)
        rows.append((where, image_id, row, parse_findings(row["Labels"], where), young))
    frontal = defaultdict(int)
    for _, _, row, _, _ in rows:
        frontal[row["StudyID"]] += row["Projection"].strip() in FRONTAL
    recs, filtered, seen = [], [], set()
    for where, image_id, row, findings, young in rows:
        proj = row["Projection"].strip()
        skip = None
        if not findings:  # blank/NaN, or a list without a finding (['']): not a negative, unlabelled
            skip = "Labels blank" if findings is None else "Labels lists no finding"
        elif any(f in PADCHEST_EXCLUDE for f in findings):
            skip = f"labelled {', '.join(f for f in findings if f in PADCHEST_EXCLUDE)!r}"
        elif young:
            skip = young
        elif views == "frontal" and proj not in FRONTAL:
            lone = "" if frontal[row["StudyID"]] else "; its study has no frontal image"
            skip = f"Projection {proj or '(blank)'} is not frontal (--views frontal){lone}"
        if skip:
            filtered.append({"row": f"{LABELS_CSV}: {image_id}", "reason": skip})
            continue
        if image_id in seen:
            raise DataError(f"{where}: ImageID {image_id} listed twice")
        seen.add(image_id)
        recs.append(
            ExternalRecord(
                key=image_id[:-4],
                image=_image_path(root, row["ImageDir"], image_id),
                labels=padchest_vector(findings),
                mask=np.ones(14, dtype=np.uint8),
                patient_id=row["PatientID"].strip(),
                view=proj,
                study=row["StudyID"].strip(),
                age=_age(row["PatientBirth"], row.get("StudyDate_DICOM", "")),
                sex=row["PatientSex_DICOM"].strip(),
                source_labels={"findings": findings},
            )
        )
    return ExternalPlan(splits={"test": recs}, filtered=filtered, sources=[path])
