"""Phantoms of the external releases: CheXpert, MIMIC-CXR-JPG and PadChest folders with synthetic radiographs.

``make_external_phantom(out, dataset)`` writes a small folder in the dataset's real file names, CSV columns and image
formats (CheXpert: ``train.csv``/``valid.csv`` + JPEG tree; MIMIC: the three ``mimic-cxr-2.0.0-*.csv.gz`` + the
``files/pXX/...`` JPEG tree; PadChest: the labels CSV + 16-bit PNGs in numbered folders). Frontal images are drawn
by the NIH phantom's ``draw_float`` with exactly the NIH classes their labels map to (``data/external/labelmap``),
so a model trained on the NIH phantom transfers. Each study also has a lateral image (a plain drawing), some
CheXpert/MIMIC labels are uncertain (-1, drawn or not at random) or blank, and PadChest rows carry findings that map
to no class (and ones excluded from a class, e.g. "pseudonodule"), a few 'exclude' / blank-label rows, and
children and blank birth years (which the default ``--min-age`` leaves out).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrdist.data.external.labelmap import (
    CHEXPERT_MAP,
    CHEXPERT_OBSERVATIONS,
    annotated_classes,
    padchest_vector,
)
from cxrdist.labels import LABEL_INDEX, LABELS
from cxrdist.phantom.draw import draw_float

DATASETS = ("chexpert", "mimic", "padchest")
POSITIVE_RATE = 0.3  # per annotated class and image: enough positives for an AUROC in a 20-image test split
_NIH_TO_CHEXPERT = {nih: obs for obs, nih in CHEXPERT_MAP.items() if nih}
# PadChest finding names drawn for each NIH class, and findings that map to none (kept as extra labels).
_PADCHEST_FINDING = {"Atelectasis": "laminar atelectasis", "Cardiomegaly": "cardiomegaly",
                     "Effusion": "pleural effusion", "Infiltration": "interstitial pattern", "Mass": "mass",
                     "Nodule": "nodule", "Pneumonia": "pneumonia", "Pneumothorax": "pneumothorax",
                     "Consolidation": "consolidation", "Edema": "edema", "Emphysema": "emphysema",
                     "Fibrosis": "pulmonary fibrosis", "Pleural_Thickening": "apical pleural thickening",
                     "Hernia": "hiatal hernia"}  # fmt: skip
_PADCHEST_EXTRA = ("aortic elongation", "scoliosis", "pseudonodule", "subcutaneous emphysema", "chronic changes")
PADCHEST_COLUMNS = (
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
    "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
    "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
    "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS",
)  # fmt: skip
MIMIC_METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)  # fmt: skip


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _draw(name: str, seed: int, size: int, classes: list[str], difficulty: float) -> np.ndarray:
    """Float image in [0, 1] with the named NIH findings (same drawing as the NIH phantom)."""
    img, _ = draw_float(_rng(seed, name), size, {LABEL_INDEX[c]: [None] for c in classes}, difficulty)
    return img


def _save(path: Path, img: np.ndarray, fmt: str) -> None:
    """8-bit JPEG/PNG or (fmt 'PNG16') 12-bit values in a 16-bit PNG, written under a temp name then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if fmt == "PNG16":
        Image.fromarray(np.rint(img * 4095.0).astype(np.uint16)).save(tmp, format="PNG")
    else:
        Image.fromarray(np.rint(img * 255.0).astype(np.uint8)).save(tmp, format=fmt, quality=95)
    os.replace(tmp, path)


def _write_csv(path: Path, header: tuple[str, ...] | list[str], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(header), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    data = buf.getvalue().encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def _labeler_findings(rng: np.random.Generator, dataset: str, uncertain: bool) -> tuple[list[str], dict[str, str]]:
    """(NIH classes drawn, CheXpert-labeler cells) for one study."""
    drawn, cells = [], {}
    for nih in annotated_classes(dataset):
        obs = _NIH_TO_CHEXPERT[nih]
        if rng.random() < POSITIVE_RATE:
            drawn.append(nih)
            cells[obs] = "1.0"
        elif uncertain and rng.random() < 0.15:
            cells[obs] = "-1.0"
            if rng.random() < 0.5:
                drawn.append(nih)
        else:
            cells[obs] = "" if uncertain and rng.random() < 0.5 else "0.0"
    cells["Support Devices"] = "1.0" if rng.random() < 0.3 else ""
    if any(nih in drawn for nih in ("Consolidation", "Edema", "Atelectasis", "Pneumonia")):
        cells["Lung Opacity"] = "1.0"
    cells["No Finding"] = "" if drawn or "-1.0" in cells.values() else "1.0"
    return drawn, cells


def _chexpert(out: Path, patients: int, size: int, seed: int, difficulty: float) -> dict[str, int]:
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "valid": []}
    for p in range(1, patients + 1):
        split = "valid" if p > patients // 2 else "train"
        rng = _rng(seed, f"chexpert/patient{p}")
        sex, age = ("Male", "Female")[int(rng.integers(2))], int(rng.integers(20, 90))
        for s in range(1, 1 + int(rng.integers(1, 3))):
            drawn, cells = _labeler_findings(rng, "chexpert", uncertain=split == "train")
            study = f"{split}/patient{p:05d}/study{s}"
            views = [("view1_frontal", "Frontal", ("PA", "AP")[int(rng.integers(2))])]
            if rng.random() < 0.5:
                views.append(("view2_lateral", "Lateral", ""))
            for v, fl, appa in views:
                _save(out / study / f"{v}.jpg", _draw(f"{study}/{v}", seed, size, drawn if fl == "Frontal" else [],
                                                      difficulty), "JPEG")  # fmt: skip
                rows[split].append({"Path": f"CheXpert-v1.0-small/{study}/{v}.jpg", "Sex": sex, "Age": age,
                                    "Frontal/Lateral": fl, "AP/PA": appa, **cells})  # fmt: skip
    _write_csv(out / "train.csv", header, rows["train"])
    _write_csv(out / "valid.csv", header, rows["valid"])
    return {k: len(v) for k, v in rows.items()}


def _mimic(out: Path, patients: int, size: int, seed: int, difficulty: float) -> dict[str, int]:
    labels, meta, split_rows = [], [], []
    for p in range(patients):
        subject = 10000032 + 97 * p
        split = ("test", "test", "test", "validate", "train")[p % 5]
        rng = _rng(seed, f"mimic/p{subject}")
        for s in range(int(rng.integers(1, 3))):
            study = 50000000 + 1000 * p + s
            drawn, cells = _labeler_findings(rng, "mimic", uncertain=True)
            labels.append({"subject_id": subject, "study_id": study, **cells})
            views = ["PA" if rng.random() < 0.6 else "AP"] + (["LATERAL"] if rng.random() < 0.5 else [])
            for view in views:
                dicom = "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, size=5))
                _save(out / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg",
                      _draw(dicom, seed, size, drawn if view != "LATERAL" else [], difficulty), "JPEG")  # fmt: skip
                meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": view,
                             "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "Rows": size, "Columns": size,
                             "StudyDate": 21800101 + s, "StudyTime": 120000.0,
                             "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
                             "ViewCodeSequence_CodeMeaning": "postero-anterior" if view == "PA" else view.lower(),
                             "PatientOrientationCodeSequence_CodeMeaning": "Erect"})  # fmt: skip
                split_rows.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split})
    obs = sorted(CHEXPERT_OBSERVATIONS)  # the release's chexpert.csv lists them alphabetically
    _write_csv(out / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *obs], labels)
    _write_csv(out / "mimic-cxr-2.0.0-metadata.csv.gz", MIMIC_METADATA_COLUMNS, meta)
    _write_csv(out / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    return {"images": len(meta), "studies": len(labels)}


def _padchest_findings(rng: np.random.Generator) -> list[str]:
    found = [_PADCHEST_FINDING[c] for c in LABELS if rng.random() < POSITIVE_RATE / 2]
    found += [f for f in _PADCHEST_EXTRA if rng.random() < 0.1]
    return found or ["normal"]


def _birth(patient: int, adult: float) -> float | str:
    """PatientBirth: a child born 2009..2013 (imaged 2015: left out by the default --min-age) for every 7th patient
    from the 4th, blank for every 13th from the 10th (age unknown), else the adult year drawn."""
    if patient % 7 == 3:
        return float(2009 + patient % 5)
    return "" if patient % 13 == 9 else adult


def _padchest(out: Path, patients: int, size: int, seed: int, difficulty: float) -> dict[str, int]:
    rows = []
    for p in range(patients):
        rng = _rng(seed, f"padchest/{p}")
        pid = str(int(rng.integers(10**15, 10**16))) + str(p)
        for s in range(int(rng.integers(1, 3))):
            study = f"{int(rng.integers(10**15, 10**16))}{p}{s}"
            findings = _padchest_findings(rng)
            drawn = [LABELS[i] for i in np.flatnonzero(padchest_vector(findings))]
            cell = repr(findings)
            if p % 11 == 5 and s == 0:  # the release's rows with blank labels and 'exclude'
                cell = "" if p % 2 else "['exclude']"
            for proj in ["PA" if rng.random() < 0.7 else "AP_horizontal"] + (["L"] if rng.random() < 0.4 else []):
                image = f"2168401113669640{study}_{p:02d}-{s:03d}-{len(rows):03d}.png"
                folder = str(len(rows) % 2)
                _save(out / folder / image, _draw(image, seed, size, drawn if proj != "L" else [], difficulty),
                      "PNG16")  # fmt: skip
                row = dict.fromkeys(PADCHEST_COLUMNS, "")
                row |= {"ImageID": image, "ImageDir": folder, "StudyDate_DICOM": 20150101 + s, "StudyID": study,
                        "PatientID": pid, "PatientBirth": _birth(p, float(rng.integers(1930, 2000))),
                        "PatientSex_DICOM": ("M", "F")[p % 2], "Projection": proj, "Modality_DICOM": "CR",
                        "PhotometricInterpretation_DICOM": "MONOCHROME2", "BitsStored_DICOM": 12,
                        "Rows_DICOM": size, "Columns_DICOM": size, "MethodLabel": "Physician", "Labels": cell,
                        "ViewPosition_DICOM": "POSTEROANTERIOR" if proj == "PA" else proj}  # fmt: skip
                rows.append(row)
    _write_csv(out / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz", PADCHEST_COLUMNS, rows)
    return {"images": len(rows)}


def make_external_phantom(
    out: Path, dataset: str, *, patients: int = 40, size: int = 256, seed: int = 0, difficulty: float = 0.5
) -> dict[str, Any]:
    """Write a phantom of ``dataset``'s release into ``out`` (created; must be empty or absent); return counts."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose {', '.join(DATASETS)}")
    if patients < 2 or size < 32 or not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"need patients ≥ 2, size ≥ 32 and difficulty in [0, 1]; got {patients}, {size}, {difficulty}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; give a new folder")
    out.mkdir(parents=True, exist_ok=True)
    writer = {"chexpert": _chexpert, "mimic": _mimic, "padchest": _padchest}[dataset]
    return {"dataset": dataset, "patients": patients, "size": size, "seed": seed, **writer(out, patients, size, seed,
                                                                                          difficulty)}  # fmt: skip
