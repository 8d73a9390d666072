"""Operating thresholds: per class, the probability cut that a positive/negative call uses.

Youden's J (Youden 1950): the cut maximising sensitivity + specificity − 1 on the ROC curve of a held-out split
(cxrdist uses ``val``, never ``test``). A cut is a probability ``t``; a call is positive when ``p ≥ t``. A class
whose split has no positive or no negative has no ROC curve: its threshold is ``None`` and its calls are left
empty rather than guessed.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from cxrdist.labels import LABELS


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities of multi-label logits (float64, overflow-safe)."""
    z = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def youden_thresholds(
    labels: np.ndarray, probs: np.ndarray, mask: np.ndarray | None = None
) -> dict[str, dict[str, float | int | None]]:
    """Per class (``LABELS`` order): threshold, J, sensitivity and specificity at it, and the counts it came from.

    Ties in J go to the highest threshold (fewest positive calls). ``probs`` are probabilities, not logits.
    ``mask`` (N, 14): 1 where the label is known (an external set's ``label_mask``); None: all known.
    """
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape or labels.ndim != 2 or labels.shape[1] != len(LABELS):
        raise ValueError(f"labels {labels.shape} and probabilities {probs.shape} must both be (N, {len(LABELS)})")
    out: dict[str, dict[str, float | int | None]] = {}
    known = np.ones(labels.shape, dtype=bool) if mask is None else np.asarray(mask).astype(bool)
    for c, name in enumerate(LABELS):
        y, p = labels[known[:, c], c], probs[known[:, c], c]
        pos = int(y.sum())
        rec: dict[str, float | int | None] = {"positives": pos, "negatives": len(y) - pos}
        if pos == 0 or pos == len(y):
            out[name] = rec | {"threshold": None, "j": None, "sensitivity": None, "specificity": None}
            continue
        fpr, tpr, cuts = roc_curve(y, p, drop_intermediate=False)
        j = tpr - fpr
        best = int(np.flatnonzero(j >= j.max() - 1e-12)[0])  # cuts run high → low: the first tie is the highest
        cut = float(min(cuts[best], 1.0))  # roc_curve's first cut is max + 1 (no positive call)
        out[name] = rec | {
            "threshold": cut,
            "j": float(j[best]),
            "sensitivity": float(tpr[best]),
            "specificity": float(1 - fpr[best]),
        }
    return out


def calls(probs: np.ndarray, thresholds: list[float | None]) -> np.ndarray:
    """Positive (1) / negative (0) calls, -1 where the class has no threshold."""
    probs = np.asarray(probs, dtype=np.float64)
    cut = np.array([np.nan if t is None else t for t in thresholds], dtype=np.float64)
    out = (probs >= cut).astype(np.int8)
    out[:, np.isnan(cut)] = -1
    return out
