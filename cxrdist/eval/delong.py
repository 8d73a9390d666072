"""DeLong's AUROC variance, per-class confidence intervals and the paired test of two correlated AUROCs.

Method (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837): with ``m`` positives ``X`` and ``n`` negatives
``Y`` of a class and ``psi(x, y) = 1 if x > y, 1/2 if x == y, 0 otherwise``, the AUROC is the Mann-Whitney statistic
``A = mean_ij psi(X_i, Y_j)``. Its structural components are ``V10_i = mean_j psi(X_i, Y_j)`` (one per positive) and
``V01_j = mean_i psi(X_i, Y_j)`` (one per negative), and the variance estimate is
``Var(A) = S10 / m + S01 / n`` with ``S10``, ``S01`` their sample variances (``ddof = 1``). For two score sets
on the same samples the components' covariances give ``Var(A_a - A_b)``.

Algorithm: the components are computed from midranks in ``O(N log N)`` per class (Sun & Xu 2014, IEEE Signal
Process. Lett. 21:1389, "fast DeLong"): with ``Tx``, ``Ty``, ``Tz`` the midranks of a score among the positives,
among the negatives and among all samples, ``V10_i = (Tz_i - Tx_i) / n`` and ``V01_j = 1 - (Tz_j - Ty_j) / m``;
midranks (``scipy.stats.rankdata``, method ``"average"``) count ties as 1/2, exactly as ``psi`` does. The point
estimate ``(sum_i Tz_i - m (m + 1) / 2) / (m n)`` is the same number as ``sklearn.metrics.roc_auc_score`` (to
rounding; it is the exactly rounded rational value).

Intervals and tests (the conventions of R's pROC ``ci.auc`` / ``roc.test`` with ``method = "delong"``):

- CI: Wald, ``A +- z_{(1+confidence)/2} sqrt(Var(A))``, clipped to ``[0, 1]``.
- Paired test: ``z = (A_a - A_b) / sqrt(Var(A_a - A_b))``, two-sided normal ``p``; the CI of the difference is the
  Wald interval clipped to ``[-1, 1]``. ``p_holm`` adjusts the per-class p-values across classes (Holm).

Assumptions: the samples are independent (DeLong's estimator treats every image as its own unit). NIH test images
are clustered by patient, so these per-class intervals are typically too narrow; the patient-clustered bootstrap of
:mod:`cxrdist.eval.bootstrap` is the interval that respects the clustering. The normal approximation needs enough
positives per class (it is poor for, e.g., a few dozen Hernia cases).

Undefined cases never raise: a class without positives or without negatives has NaN everywhere; with a single
positive or negative the AUROC is defined but the variance is not (NaN), as in pROC; a zero variance (perfect
separation) gives a point interval. Each such class carries a one-line ``reasons[c]``. In the paired test, a zero
variance with ``A_a == A_b`` (e.g. identical predictions) gives ``z = 0, p = 1``; a zero variance with
``A_a != A_b`` (e.g. a perfect vs a constant scorer) has no normal approximation: ``z`` and ``p`` are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

from cxrdist.eval.stats import check_scores, holm, normal_quantile

__all__ = ["DelongResult", "PairedDelongResult", "delong_auroc", "delong_paired", "structural_components"]

# A standard error below this is a zero variance (the rounding floor of components on the [0, 1] scale).
_ZERO_SE = 1e-12


@dataclass(frozen=True)
class DelongResult:
    """Per-class DeLong estimates; every array has one entry per class (column)."""

    auroc: np.ndarray  # (C,) float: the AUROC (= roc_auc_score), NaN without positives or negatives
    variance: np.ndarray  # (C,) DeLong variance of the AUROC, NaN if undefined
    ci_low: np.ndarray  # (C,) lower end of the Wald interval, clipped to [0, 1]
    ci_high: np.ndarray  # (C,) upper end
    num_positive: np.ndarray  # (C,) int
    num_negative: np.ndarray  # (C,) int
    reasons: tuple[str | None, ...]  # (C,) why a class's values are NaN or degenerate; None when regular
    confidence: float


@dataclass(frozen=True)
class PairedDelongResult:
    """Per-class paired DeLong test of ``A_a - A_b`` on the same samples; arrays have one entry per class."""

    auroc_a: np.ndarray  # (C,)
    auroc_b: np.ndarray  # (C,)
    delta: np.ndarray  # (C,) auroc_a - auroc_b
    variance: np.ndarray  # (C,) DeLong variance of delta
    ci_low: np.ndarray  # (C,) Wald interval of delta, clipped to [-1, 1]
    ci_high: np.ndarray  # (C,)
    z: np.ndarray  # (C,)
    p: np.ndarray  # (C,) two-sided
    p_holm: np.ndarray  # (C,) Holm-adjusted across the classes with a p-value
    num_positive: np.ndarray  # (C,) int
    num_negative: np.ndarray  # (C,) int
    reasons: tuple[str | None, ...]
    confidence: float


def structural_components(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROC and DeLong structural components of ``K`` score sets on the same ``m`` positives and ``n`` negatives.

    Args:
        positives: ``(K, m)`` scores of the positive samples, ``m >= 1``.
        negatives: ``(K, n)`` scores of the negative samples, ``n >= 1``.

    Returns:
        ``auroc`` ``(K,)``, ``v10`` ``(K, m)`` and ``v01`` ``(K, n)`` (Sun & Xu 2014 midrank formulas).
    """
    m, n = positives.shape[1], negatives.shape[1]
    tx = rankdata(positives, axis=1)
    ty = rankdata(negatives, axis=1)
    tz = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    auroc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return auroc, v10, v01


def _covariance(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """DeLong covariance ``S10 / m + S01 / n`` of the ``K`` AUROCs, ``(K, K)``."""
    m, n = v10.shape[1], v01.shape[1]
    return np.atleast_2d(np.cov(v10, ddof=1)) / m + np.atleast_2d(np.cov(v01, ddof=1)) / n


def _undefined_reason(num_pos: int, num_neg: int) -> str | None:
    if num_pos == 0:
        return f"no positives (all {num_neg} samples negative): AUROC undefined"
    if num_neg == 0:
        return f"no negatives (all {num_pos} samples positive): AUROC undefined"
    return None


def _variance_reason(num_pos: int, num_neg: int) -> str | None:
    if min(num_pos, num_neg) < 2:
        return (
            f"{num_pos} positive(s), {num_neg} negative(s): the DeLong variance needs at least 2 of each "
            "(variance and interval NaN)"
        )
    return None


def delong_auroc(labels: np.ndarray, scores: np.ndarray, confidence: float = 0.95) -> DelongResult:
    """Per-class AUROC with its DeLong variance and Wald confidence interval.

    Args:
        labels: ``(N, C)`` (or ``(N,)``) 0/1 ground truth.
        scores: same shape, finite scores (logits or probabilities; only their order matters).
        confidence: interval level (0.95: the 95% CI).

    Returns:
        :class:`DelongResult` (see the module docstring for the method, its assumptions and undefined cases).
    """
    labels, scores = check_scores(labels, scores)
    q = normal_quantile(confidence)
    num_classes = labels.shape[1]
    auroc, variance = np.full(num_classes, np.nan), np.full(num_classes, np.nan)
    reasons: list[str | None] = []
    num_pos = labels.sum(axis=0)
    num_neg = labels.shape[0] - num_pos
    for c in range(num_classes):
        reason = _undefined_reason(num_pos[c], num_neg[c])
        if reason is None:
            y = labels[:, c]
            a, v10, v01 = structural_components(scores[y, c][None], scores[~y, c][None])
            auroc[c] = a[0]
            reason = _variance_reason(num_pos[c], num_neg[c])
            if reason is None:
                variance[c] = _covariance(v10, v01)[0, 0]
                if np.sqrt(variance[c]) < _ZERO_SE:
                    reason = f"zero DeLong variance (AUROC {auroc[c]:g}): the interval is a single point"
        reasons.append(reason)
    se = np.sqrt(variance)
    return DelongResult(
        auroc=auroc,
        variance=variance,
        ci_low=np.clip(auroc - q * se, 0.0, 1.0),
        ci_high=np.clip(auroc + q * se, 0.0, 1.0),
        num_positive=num_pos.astype(np.int64),
        num_negative=num_neg.astype(np.int64),
        reasons=tuple(reasons),
        confidence=confidence,
    )


def _paired_class(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float, float, float, float, str | None]:
    """``(auroc_a, auroc_b, delta, variance, z, reason)`` of one class; ``pos``/``neg`` are ``(2, m)``/``(2, n)``."""
    auroc, v10, v01 = structural_components(pos, neg)
    delta = float(auroc[0] - auroc[1])
    reason = _variance_reason(pos.shape[1], neg.shape[1])
    if reason is not None:
        return auroc[0], auroc[1], delta, np.nan, np.nan, reason
    # Var(A_a - A_b) from the differences of the components: the same value as S_aa + S_bb - 2 S_ab, but exactly
    # 0 when the two rankings agree (no cancellation).
    variance = float(_covariance((v10[0] - v10[1])[None], (v01[0] - v01[1])[None])[0, 0])
    if np.sqrt(variance) >= _ZERO_SE:
        return auroc[0], auroc[1], delta, variance, delta / np.sqrt(variance), None
    if delta == 0.0:
        return auroc[0], auroc[1], delta, variance, 0.0, "zero variance and delta = 0 (same ranking): z = 0, p = 1"
    reason = f"zero variance with delta = {delta:g} (e.g. perfect vs constant scores): no normal test, z and p NaN"
    return auroc[0], auroc[1], delta, variance, np.nan, reason


def delong_paired(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, confidence: float = 0.95
) -> PairedDelongResult:
    """Per-class DeLong test of two correlated AUROCs (two runs' scores on the same samples, rows aligned).

    Args:
        labels: ``(N, C)`` (or ``(N,)``) 0/1 ground truth shared by both runs.
        scores_a: run A's scores, same shape; row ``i`` is the same sample as in ``scores_b``
            (align them with :func:`cxrdist.eval.stats.align_keys` first).
        scores_b: run B's scores.
        confidence: level of the interval of the difference.

    Returns:
        :class:`PairedDelongResult` with ``delta = auroc_a - auroc_b``, its variance, Wald CI, ``z``, two-sided
        ``p`` and the Holm-adjusted ``p_holm`` across classes.
    """
    labels, scores_a = check_scores(labels, scores_a, "scores_a")
    _, scores_b = check_scores(labels, scores_b, "scores_b")
    q = normal_quantile(confidence)
    num_classes = labels.shape[1]
    rows = np.full((num_classes, 5), np.nan)  # auroc_a, auroc_b, delta, variance, z
    reasons: list[str | None] = []
    num_pos = labels.sum(axis=0)
    num_neg = labels.shape[0] - num_pos
    for c in range(num_classes):
        reason = _undefined_reason(num_pos[c], num_neg[c])
        if reason is None:
            y = labels[:, c]
            pair = np.stack([scores_a[:, c], scores_b[:, c]])
            *values, reason = _paired_class(pair[:, y], pair[:, ~y])
            rows[c] = values
        reasons.append(reason)
    auroc_a, auroc_b, delta, variance, z = rows.T
    p = np.where(np.isnan(z), np.nan, 2.0 * norm.sf(np.abs(z)))
    se = np.sqrt(variance)
    return PairedDelongResult(
        auroc_a=auroc_a,
        auroc_b=auroc_b,
        delta=delta,
        variance=variance,
        ci_low=np.clip(delta - q * se, -1.0, 1.0),
        ci_high=np.clip(delta + q * se, -1.0, 1.0),
        z=z,
        p=p,
        p_holm=holm(p),
        num_positive=num_pos.astype(np.int64),
        num_negative=num_neg.astype(np.int64),
        reasons=tuple(reasons),
        confidence=confidence,
    )
