"""Weighted AUROC of many resamples at once: "sort once, resample as weights".

A bootstrap resample of clustered data is a vector of cluster counts ``c`` (how often each patient was drawn); every
image then carries the weight ``w_i = c_{patient(i)}``. The AUROC of the resample is the weighted Mann-Whitney
statistic ``sum_{i pos, j neg} w_i w_j psi(s_i, s_j) / (W_pos W_neg)`` with ``psi = 1, 1/2, 0`` for ``>, ==, <``,
which is exactly ``roc_auc_score`` on the explicitly resampled arrays (every image repeated ``w_i`` times).

Each class's negatives are sorted by score once, and each positive's rank among them (strictly below, and at or
below for ties) is found once by binary search. Per resample, the weights of the negatives in score order are
cumulated; the cumulative weight read at each positive's rank (plus half its ties) is dotted with the positives'
weights. That is ``O(N)`` per class and resample, vectorised over chunks of resamples, in integer arithmetic until
one final division (exact: no rounding before it). 2,000 resamples of 25,596 × 14 scores take about 2 s of one core
(``benchmarks/stats.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["resample_auroc"]

_CHUNK = 32  # resamples per vectorised step: keeps the (chunk, N) work arrays in cache (benchmarks/stats.py)


@dataclass(frozen=True)
class _SortedClass:
    """One class's scores sorted once: what every resample's weighted AUROC reads."""

    neg_cluster: np.ndarray  # (n,) cluster of each negative, negatives in ascending score order
    pos_cluster: np.ndarray  # (m,) cluster of each positive
    below: np.ndarray  # (m,) number of negatives scoring strictly below each positive
    tie_pos: np.ndarray  # positives tied with at least one negative
    tie_upto: np.ndarray  # for those, number of negatives scoring <= the positive


def _sort_class(labels: np.ndarray, scores: np.ndarray, cluster: np.ndarray) -> _SortedClass:
    order = np.argsort(scores[~labels], kind="stable")
    neg_scores = scores[~labels][order]
    pos_scores = scores[labels]
    below = np.searchsorted(neg_scores, pos_scores, side="left")
    upto = np.searchsorted(neg_scores, pos_scores, side="right")
    tie_pos = np.flatnonzero(upto > below)
    return _SortedClass(cluster[~labels][order], cluster[labels], below, tie_pos, upto[tie_pos])


def _weighted_auroc(counts: np.ndarray, sc: _SortedClass, cum_dtype: type) -> np.ndarray:
    """Weighted AUROC of one class for each row of ``counts`` ``(b, P)``; NaN where a resample lacks a side."""
    neg_w = np.take(counts, sc.neg_cluster, axis=1)
    cum = np.empty((counts.shape[0], neg_w.shape[1] + 1), dtype=cum_dtype)
    cum[:, 0] = 0
    np.cumsum(neg_w, axis=1, dtype=cum_dtype, out=cum[:, 1:])
    # 2 x (weight of negatives below + half the tied ones): integers, exact in float64 below 2**53.
    twice = 2.0 * np.take(cum, sc.below, axis=1)
    if sc.tie_pos.size:
        twice[:, sc.tie_pos] += np.take(cum, sc.tie_upto, axis=1) - np.take(cum, sc.below[sc.tie_pos], axis=1)
    pos_w = np.take(counts, sc.pos_cluster, axis=1).astype(np.float64)
    numerator = np.einsum("ij,ij->i", pos_w, twice)
    with np.errstate(invalid="ignore", divide="ignore"):
        return numerator / (2.0 * pos_w.sum(axis=1) * cum[:, -1])


def resample_auroc(labels: np.ndarray, scores: np.ndarray, cluster: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-class AUROC of every resample: ``(B, C)``, NaN where a class has no positive or no negative weight.

    Args:
        labels: ``(N, C)`` 0/1 or bool labels.
        scores: ``(N, C)`` finite scores.
        cluster: ``(N,)`` cluster index of each item, in ``0..P-1``.
        counts: ``(B, P)`` non-negative integer cluster counts (:func:`cxrdist.eval.bootstrap.resample_counts`);
            a row of ones gives the AUROC of the data itself.

    The result is exact (one rounding, in the final division) while the total weight of a resample stays below
    ``6.7e7`` (``2 W^2 < 2^53``); beyond that it is accurate to float64 rounding.
    """
    labels = np.asarray(labels, dtype=bool)
    defined = labels.any(axis=0) & (~labels).any(axis=0)
    sorted_classes = {c: _sort_class(labels[:, c], scores[:, c], cluster) for c in np.flatnonzero(defined)}
    # Integer cumulative weights: int32 (half the memory traffic of int64) while the largest total fits.
    fits = int(counts.max(initial=0)) * labels.shape[0] < np.iinfo(np.int32).max
    cum_dtype = np.int32 if fits else np.int64
    out = np.full((counts.shape[0], labels.shape[1]), np.nan)
    for start in range(0, counts.shape[0], _CHUNK):
        chunk = counts[start : start + _CHUNK]
        for c, sc in sorted_classes.items():
            out[start : start + _CHUNK, c] = _weighted_auroc(chunk, sc, cum_dtype)
    return out
