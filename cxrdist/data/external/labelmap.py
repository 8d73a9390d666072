"""Each external dataset's label names → the 14 ChestX-ray14 classes, in one place.

A dataset label maps to one NIH class or to none. An NIH class that no label of a dataset maps to is "not
annotated" there: its column is masked (never a silent 0) and it is left out of that dataset's mean AUROC.
The maps are written into every external shard root's ``_dataset.json`` and shown in the README.

CheXpert and MIMIC-CXR-JPG share the CheXpert labeler's 14 observations (Irvin et al. 2019, Table 1). PadChest's
``Labels`` column holds free-form UMLS-derived finding names (Bustos et al. 2020); a finding maps to an NIH class
when one of the class's terms occurs in it as whole words (``r"\\bterm(s)?\\b"``), unless an excluded term does
(e.g. "subcutaneous emphysema" is not lung Emphysema, "pericardial effusion" is not a pleural Effusion). The terms
follow torchxrayvision's ``PC_Dataset`` mapping (its substring match made word-bounded, and with the exclusions).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from cxrdist.labels import LABEL_INDEX, LABELS, NUM_LABELS

# The CheXpert labeler's observations, as CheXpert's train.csv/valid.csv and mimic-cxr-2.0.0-chexpert.csv name them.
CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
# Observation → NIH class, or None: "Lung Lesion" is Mass ∪ Nodule (no single class), "Lung Opacity" spans
# Infiltration/Consolidation/Edema/Atelectasis, "Pleural Other" is more than Pleural_Thickening.
CHEXPERT_MAP: dict[str, str | None] = {
    "No Finding": None,
    "Enlarged Cardiomediastinum": None,
    "Cardiomegaly": "Cardiomegaly",
    "Lung Opacity": None,
    "Lung Lesion": None,
    "Edema": "Edema",
    "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia",
    "Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Pleural Effusion": "Effusion",
    "Pleural Other": None,
    "Fracture": None,
    "Support Devices": None,
}

# PadChest: NIH class → (terms, excluded terms), lower case. A finding may hit several classes (as in
# torchxrayvision: "consolidation" is also an Infiltration, "air bronchogram" both).
PADCHEST_TERMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Atelectasis": (("atelectasis",), ()),
    "Cardiomegaly": (("cardiomegaly",), ()),
    "Effusion": (("pleural effusion", "fissural effusion"), ()),
    "Infiltration": (
        (
            "infiltrates",
            "interstitial pattern",
            "ground glass pattern",
            "reticular interstitial pattern",
            "reticulonodular interstitial pattern",
            "alveolar pattern",
            "consolidation",
            "air bronchogram",
        ),
        (),
    ),  # fmt: skip
    "Mass": (("mass",), ("breast mass",)),
    "Nodule": (("nodule",), ("pseudonodule",)),
    "Pneumonia": (("pneumonia",), ()),
    "Pneumothorax": (("pneumothorax",), ()),
    "Consolidation": (("consolidation", "air bronchogram"), ()),
    "Edema": (("edema",), ()),
    "Emphysema": (("emphysema",), ("subcutaneous emphysema",)),
    "Fibrosis": (("fibrosis",), ()),
    "Pleural_Thickening": (("pleural thickening",), ()),
    "Hernia": (("hernia",), ()),
}
PADCHEST_NORMAL = "normal"
# Findings that say the image is not a usable radiograph of the study: counted skips, not labels.
PADCHEST_EXCLUDE = ("exclude", "suboptimal study")

UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")  # CheXpert paper's U-Ignore / U-Zeros / U-Ones (Irvin 2019, §4)


def _term_re(term: str) -> re.Pattern[str]:
    return re.compile(r"\b" + re.escape(term) + r"(s)?\b")


_PADCHEST_RES = {
    cls: ([_term_re(t) for t in terms], [_term_re(t) for t in excluded])
    for cls, (terms, excluded) in PADCHEST_TERMS.items()
}


def padchest_classes(finding: str) -> list[str]:
    """The NIH classes one PadChest finding (any case, spaces trimmed) maps to (maybe none)."""
    f = finding.strip().lower()
    return [
        cls
        for cls, (terms, excluded) in _PADCHEST_RES.items()
        if any(t.search(f) for t in terms) and not any(x.search(f) for x in excluded)
    ]


def annotated_classes(dataset: str) -> tuple[str, ...]:
    """The NIH classes ``dataset`` annotates, in LABELS order."""
    if dataset in ("chexpert", "mimic"):
        mapped = {v for v in CHEXPERT_MAP.values() if v}
    elif dataset == "padchest":
        mapped = set(PADCHEST_TERMS)
    else:
        raise ValueError(f"unknown external dataset {dataset!r}; choose chexpert, mimic or padchest")
    return tuple(c for c in LABELS if c in mapped)


def annotated_mask(dataset: str) -> np.ndarray:
    """uint8 14-vector: 1 for the classes ``dataset`` annotates."""
    mask = np.zeros(NUM_LABELS, dtype=np.uint8)
    for c in annotated_classes(dataset):
        mask[LABEL_INDEX[c]] = 1
    return mask


def label_map_record(dataset: str) -> dict[str, object]:
    """The map as the manifest records it: source names → NIH class or None, and the classes not annotated."""
    annotated = annotated_classes(dataset)
    if dataset == "padchest":
        source = {cls: {"terms": list(t), "excluded": list(x)} for cls, (t, x) in PADCHEST_TERMS.items()}
    else:
        source = dict(CHEXPERT_MAP)
    return {
        "dataset": dataset,
        "map": source,
        "annotated": list(annotated),
        "not_annotated": [c for c in LABELS if c not in annotated],
    }


def chexpert_vector(values: dict[str, float | None], uncertain: str) -> tuple[np.ndarray, np.ndarray]:
    """CheXpert-labeler values (1, 0, -1 or None for blank) → NIH (labels, mask) 14-vectors (uint8).

    Blank means "not mentioned" and is a negative (the CheXpert paper's reading). -1 follows ``uncertain``:
    ``ignore`` masks that class for this image, ``zeros``/``ones`` make it 0/1. Classes the dataset does not
    annotate are masked. Several observations never share an NIH class, so no merge rule is needed.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain policy {uncertain!r}; choose {', '.join(UNCERTAIN_POLICIES)}")
    labels = np.zeros(NUM_LABELS, dtype=np.uint8)
    mask = np.zeros(NUM_LABELS, dtype=np.uint8)
    for obs, cls in CHEXPERT_MAP.items():
        if cls is None:
            continue
        i, v = LABEL_INDEX[cls], values.get(obs)
        mask[i] = 1
        if v == 1:
            labels[i] = 1
        elif v == -1:
            if uncertain == "ignore":
                mask[i] = 0
            elif uncertain == "ones":
                labels[i] = 1
    return labels, mask


def padchest_vector(findings: Iterable[str]) -> np.ndarray:
    """PadChest findings → NIH 14-vector of 0/1 (uint8); every class is annotated in PadChest."""
    labels = np.zeros(NUM_LABELS, dtype=np.uint8)
    for f in findings:
        for cls in padchest_classes(f):
            labels[LABEL_INDEX[cls]] = 1
    return labels
