"""Rows of the tables an experiment tracker shows beside the figures (pure functions over arrays).

- :func:`roc_points`: the per-class ROC curve points behind ``roc.png``, as ``[class, fpr, tpr]`` rows (a
  tracker draws them as one line per class: W&B's ``wandb.plot.line`` with ``stroke="class"``).
- :func:`bbox_image_rows`: one row per image of the bbox split: its labels, the model's top probabilities and
  the best IoU of each ground-truth box at a fixed threshold, and the name of its overlay image when it is a
  heatmap example (an offline W&B table cannot hold images).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from cxrdist.labels import LABELS

ROC_COLUMNS = ["class", "fpr", "tpr"]
BBOX_COLUMNS = ["key", "labels", "top probabilities", "best IoU per box", "overlay"]  # overlay: its image's name


def roc_points(labels: np.ndarray, scores: np.ndarray, max_points: int = 200) -> list[list[Any]]:
    """``[class, fpr, tpr]`` rows of each class's ROC curve (at most ``max_points`` per class, ends kept).

    A class with a single label value has no curve and no rows (``roc.png`` lists it as n/a).
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    rows: list[list[Any]] = []
    for c, name in enumerate(LABELS[: labels.shape[1]]):
        if labels[:, c].min() == labels[:, c].max():
            continue
        fpr, tpr, _ = roc_curve(labels[:, c], scores[:, c])
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), max_points)).round().astype(int))
        rows += [[name, float(fpr[i]), float(tpr[i])] for i in keep]
    return rows


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def bbox_image_rows(
    keys: Sequence[str],
    labels: np.ndarray,
    logits: np.ndarray,
    per_box: Mapping[str, Any],
    threshold: str,
    overlays: Mapping[str, str] | None = None,
    top: int = 3,
) -> list[list[Any]]:
    """Rows of :data:`BBOX_COLUMNS`, one per image (split order).

    ``per_box``: localization's ``per_box`` (``key``, ``class_idx``, ``best_iou`` per threshold);
    ``threshold``: which of its thresholds (e.g. ``"60"``); ``overlays``: key → the name its heatmap example
    was logged under ("" elsewhere). Probabilities are the sigmoid of the logits, written ``name 0.812``.
    """
    ious: dict[str, list[str]] = {}
    for key, c, iou in zip(per_box["key"], per_box["class_idx"], per_box["best_iou"][threshold]):
        ious.setdefault(key, []).append(f"{LABELS[c]} {iou:.3f}")
    probs = _sigmoid(logits)
    rows = []
    for i, key in enumerate(keys):
        names = [LABELS[c] for c in np.flatnonzero(np.asarray(labels[i]) > 0)]
        order = np.argsort(-probs[i])[:top]
        best = ", ".join(f"{LABELS[c]} {probs[i, c]:.3f}" for c in order)
        rows.append(
            [key, ", ".join(names) or "No Finding", best, ", ".join(ious.get(key, [])), (overlays or {}).get(key, "")]
        )
    return rows
