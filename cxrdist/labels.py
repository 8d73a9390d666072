"""The 14 ChestX-ray14 labels, the 8 box classes, and parsing of NIH label strings.

The label order (docs/methods.md#labels-and-splits) is the order of every label vector, logit vector and
table in cxrdist.
"""

from __future__ import annotations

import numpy as np

LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NUM_LABELS = len(LABELS)
# The box list (BBox_List_2017.csv) covers exactly the first 8 labels.
BOX_CLASSES: tuple[str, ...] = LABELS[:8]
NO_FINDING = "No Finding"
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABELS)}

# Spellings seen in the NIH files that differ from LABELS: the box list writes "Infiltrate".
_ALIASES = {"Infiltrate": "Infiltration", "Pleural Thickening": "Pleural_Thickening"}


class LabelError(ValueError):
    """An unknown or malformed label, with the file and row it came from."""


def normalize_label(name: str, *, source: str = "<input>", row: int | str = "?") -> str:
    """Return the canonical label name for ``name``.

    Args:
        name: a label as written in an NIH file (``Infiltrate`` is accepted for ``Infiltration``).
        source: the file the label came from, for the error message.
        row: the row (1-based line number or image index) the label came from.

    Raises:
        LabelError: the name is not one of the 14 labels.
    """
    clean = name.strip()
    clean = _ALIASES.get(clean, clean)
    if clean not in LABEL_INDEX:
        raise LabelError(f"{source}: row {row}: unknown label {name!r} (known: {', '.join(LABELS)})")
    return clean


def parse_finding_labels(text: str, *, source: str = "<input>", row: int | str = "?") -> np.ndarray:
    """Parse a ``Finding Labels`` cell (``A|B|C`` or ``No Finding``) into a 14-vector of uint8 0/1.

    Raises:
        LabelError: an unknown label, an empty cell, or ``No Finding`` mixed with findings.
    """
    parts = [p.strip() for p in text.split("|")]
    if not text.strip() or any(not p for p in parts):
        raise LabelError(f"{source}: row {row}: empty label in Finding Labels {text!r}")
    vec = np.zeros(NUM_LABELS, dtype=np.uint8)
    if parts == [NO_FINDING]:
        return vec
    for p in parts:
        if p == NO_FINDING:
            raise LabelError(f"{source}: row {row}: 'No Finding' combined with findings in {text!r}")
        vec[LABEL_INDEX[normalize_label(p, source=source, row=row)]] = 1
    return vec


def format_finding_labels(vec: np.ndarray) -> str:
    """Inverse of :func:`parse_finding_labels` (labels in LABELS order)."""
    names = [LABELS[i] for i in np.flatnonzero(np.asarray(vec))]
    return "|".join(names) if names else NO_FINDING
