"""Per-class AUROC: identical to sklearn on the whole split, undefined classes reported and excluded."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrdist.eval.classification import auroc_per_class
from cxrdist.labels import LABELS


def _random_split(num: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((num, 14)) < rng.uniform(0.01, 0.3, 14)).astype(np.uint8)
    scores = rng.standard_normal((num, 14)) + labels
    return labels, scores


def test_equals_sklearn_with_undefined_class() -> None:
    labels, scores = _random_split()
    labels[:, 13] = 0  # Hernia absent from the split: AUROC undefined
    scores[:, 5] = np.round(scores[:, 5], 1)  # ties must be handled exactly as sklearn does
    res = auroc_per_class(labels, scores)

    expected = {LABELS[c]: roc_auc_score(labels[:, c], scores[:, c]) for c in range(13)}
    assert {k: v for k, v in res["per_class"].items() if k != "Hernia"} == expected  # exact, not approx
    assert res["per_class"]["Hernia"] is None
    assert res["mean"] == float(np.mean(list(expected.values())))
    assert res["num_defined"] == 13
    assert res["num_samples"] == 3000
    assert res["positives"]["Hernia"] == 0
    assert res["positives"]["Atelectasis"] == int(labels[:, 0].sum())
    assert len(res["warnings"]) == 1 and "Hernia" in res["warnings"][0] and "mean" in res["warnings"][0]


def test_all_positive_class_is_undefined_too() -> None:
    labels, scores = _random_split(500, seed=1)
    labels[:, 0] = 1
    res = auroc_per_class(labels.astype(np.int64), scores.astype(np.float32))
    assert res["per_class"]["Atelectasis"] is None
    assert "label 1" in res["warnings"][0]
    assert res["per_class"]["Cardiomegaly"] == roc_auc_score(labels[:, 1], scores[:, 1].astype(np.float32))


def test_bad_inputs() -> None:
    labels, scores = _random_split(100)
    with pytest.raises(ValueError, match="0/1"):
        auroc_per_class(labels * 2, scores)
    with pytest.raises(ValueError, match=r"\(N, 14\)"):
        auroc_per_class(labels[:, :13], scores[:, :13])
    scores[3, 2] = np.nan
    with pytest.raises(ValueError, match="Effusion"):
        auroc_per_class(labels, scores)
