"""Per-class AUROC on a whole split, exactly as sklearn's ``roc_auc_score`` computes it in one process."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from cxrdist.labels import LABELS

logger = logging.getLogger(__name__)


def _check_inputs(labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str]) -> None:
    if labels.ndim != 2 or labels.shape != scores.shape or labels.shape[1] != len(class_names):
        raise ValueError(
            f"labels and scores must both be (N, {len(class_names)}); got {labels.shape} and {scores.shape}"
        )
    if labels.shape[0] == 0:
        raise ValueError("empty split: no samples")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, found values {np.unique(labels)[:10].tolist()}")
    bad = [class_names[c] for c in np.flatnonzero(~np.isfinite(scores).all(axis=0))]
    if bad:
        raise ValueError(f"scores contain NaN or inf for {bad}")


def auroc_per_class(
    labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str] = LABELS, log: bool = True
) -> dict[str, Any]:
    """Per-class AUROC and their mean over the classes where it is defined.

    Each column goes to ``sklearn.metrics.roc_auc_score`` unchanged, so the numbers are identical to sklearn's
    on the whole split. A class whose labels take a single value in the split has no AUROC: it is reported as
    ``None``, left out of the mean, and a warning says so (the warning travels with the result so that the
    report can show it, not only the log).

    Args:
        labels: ``(N, C)`` 0/1 ground truth (uint8 or int).
        scores: ``(N, C)`` float scores (logits or probabilities; AUROC only uses their order).
        class_names: names of the ``C`` columns (default: the 14 LABELS).
        log: also log each warning (a caller that repeats the call on the same labels logs them once itself).

    Returns:
        ``per_class`` {name: float | None}, ``mean`` (over defined classes; None if none), ``num_defined``,
        ``positives`` {name: int}, ``num_samples`` and ``warnings`` (list of str).
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    _check_inputs(labels, scores, class_names)
    num = labels.shape[0]
    per_class: dict[str, float | None] = {}
    positives: dict[str, int] = {}
    warnings: list[str] = []
    for c, name in enumerate(class_names):
        column = labels[:, c]
        positives[name] = int(np.count_nonzero(column))
        if positives[name] in (0, num):
            value = int(column[0])
            per_class[name] = None
            warnings.append(f"{name}: AUROC undefined, all {num} samples have label {value}; left out of the mean")
            if log:
                logger.warning(warnings[-1])
            continue
        per_class[name] = float(roc_auc_score(column, scores[:, c]))
    defined = [v for v in per_class.values() if v is not None]
    return {
        "per_class": per_class,
        "mean": float(np.mean(defined)) if defined else None,
        "num_defined": len(defined),
        "positives": positives,
        "num_samples": num,
        "warnings": warnings,
    }
