"""Operating thresholds (Youden's J) and the calls they give."""

from __future__ import annotations

import numpy as np

from cxrdist.eval.thresholds import calls, sigmoid, youden_thresholds
from cxrdist.labels import LABELS


def _brute_force(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Highest cut among those with the largest sensitivity + specificity − 1 (calls: p ≥ cut)."""
    best = (-2.0, 0.0)
    for t in sorted(set(p.tolist()), reverse=True):
        j = (p[y == 1] >= t).mean() + (p[y == 0] < t).mean() - 1
        if j > best[0] + 1e-12:
            best = (j, t)
    return best


def test_youden_matches_brute_force_and_handles_undefined_classes():
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 14)) < 0.3).astype(np.uint8)
    probs = np.clip(0.35 * labels + rng.random((60, 14)) * 0.7, 0, 1)
    labels[:, 13] = 0  # Hernia: no positive → no ROC curve
    out = youden_thresholds(labels, probs)
    assert list(out) == list(LABELS)
    for c, name in enumerate(LABELS[:13]):
        j, t = _brute_force(labels[:, c], probs[:, c])
        assert out[name]["threshold"] == t and abs(out[name]["j"] - j) < 1e-12, name
    assert out["Hernia"]["threshold"] is None and out["Hernia"]["positives"] == 0
    mask = np.ones_like(labels)
    mask[:30, 0] = 0  # the first 30 Atelectasis labels unknown: only the rest choose its threshold
    masked = youden_thresholds(labels, probs, mask)["Atelectasis"]
    assert masked["threshold"] == _brute_force(labels[30:, 0], probs[30:, 0])[1]
    assert masked["positives"] + masked["negatives"] == 30


def test_calls_and_sigmoid():
    probs = np.array([[0.2, 0.7, 0.9], [0.5, 0.1, 0.3]])
    np.testing.assert_array_equal(calls(probs, [0.5, 0.7, None]), [[0, 1, -1], [1, 0, -1]])
    np.testing.assert_allclose(sigmoid(np.array([-800.0, 0.0, 800.0])), [0.0, 0.5, 1.0])
