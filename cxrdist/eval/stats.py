"""Shared statistics helpers: input checks, key alignment, Holm's adjustment, percentile CIs, bootstrap p-values.

The interval and test machinery lives in :mod:`cxrdist.eval.delong` (per-class DeLong intervals and the paired
DeLong test) and :mod:`cxrdist.eval.bootstrap` (patient-clustered bootstrap); this module holds what both use and
what a comparison of two runs needs first:

- :func:`align_keys` checks that two prediction sets cover the same keys and returns the index that puts the second
  in the first one's order (a one-line ``ValueError`` naming the first offending key otherwise).
- :func:`holm` is Holm's (1979) step-down adjustment, NaN-aware with R ``p.adjust(method="holm")`` semantics.
- :func:`percentile_ci` and :func:`bootstrap_p_value` turn bootstrap samples into an interval and a p-value.
- :func:`check_scores` validates ``(labels, scores)`` arrays once for every AUROC function.

Everything here is a pure function over numpy arrays.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import norm

__all__ = ["align_keys", "bootstrap_p_value", "check_scores", "holm", "normal_quantile", "percentile_ci"]


def normal_quantile(confidence: float) -> float:
    """The two-sided standard-normal quantile of a ``confidence`` interval (1.959963984540054 for 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2.0))


def check_scores(labels: np.ndarray, scores: np.ndarray, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """Validate 0/1 ``labels`` and finite ``scores`` of the same shape; return both as 2-D ``(N, C)`` arrays.

    A 1-D pair is one class (``C = 1``). Labels are returned as bool, scores as float64 (AUROC only uses their
    order, and float64 holds every float32 exactly).
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    if labels.ndim == 1 and scores.ndim == 1:
        labels, scores = labels[:, None], scores[:, None]
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(f"labels and {what} must have the same (N, C) shape; got {labels.shape} and {scores.shape}")
    if labels.shape[0] == 0:
        raise ValueError(f"labels and {what} are empty: no samples")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, found values {np.unique(labels)[:10].tolist()}")
    bad = np.flatnonzero(~np.isfinite(scores).all(axis=0))
    if bad.size:
        raise ValueError(f"{what} contain NaN or inf in class column(s) {bad.tolist()}: fix the predictions")
    return labels.astype(bool), scores.astype(np.float64)


def align_keys(reference: Sequence, other: Sequence, names: tuple[str, str] = ("A", "B")) -> np.ndarray:
    """Index that puts ``other`` in ``reference``'s key order: ``other_array[index]`` lines up with ``reference``.

    Two prediction sets are comparable when they hold the same keys, each once; their order may differ. The
    index is ``arange(N)`` when the order already matches.

    Raises:
        ValueError: (one line) naming the first duplicated key, or the first key of one set missing from the other.
    """
    ref, oth = _as_list(reference), _as_list(other)
    for name, keys in zip(names, (ref, oth)):
        seen: set = set()
        for key in keys:
            if key in seen:
                raise ValueError(f"{name}: key {key!r} appears more than once; each key must appear exactly once")
            seen.add(key)
    if ref == oth:
        return np.arange(len(ref), dtype=np.intp)
    position = {key: i for i, key in enumerate(oth)}
    for key in ref:
        if key not in position:
            raise ValueError(
                f"key {key!r} is in {names[0]} but not in {names[1]} ({len(ref)} vs {len(oth)} keys): "
                "compare predictions on the same split"
            )
    if len(oth) != len(ref):
        known = set(ref)
        extra = next(key for key in oth if key not in known)
        raise ValueError(
            f"key {extra!r} is in {names[1]} but not in {names[0]} ({len(ref)} vs {len(oth)} keys): "
            "compare predictions on the same split"
        )
    return np.array([position[key] for key in ref], dtype=np.intp)


def _as_list(keys: Sequence) -> list:
    # ndarray.tolist() gives plain Python keys, so an error message shows 'a.png', not np.str_('a.png').
    return keys.tolist() if isinstance(keys, np.ndarray) else list(keys)


def holm(pvalues: np.ndarray | Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order, NaN-aware.

    With the ``m`` finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of ``p_(i)`` is
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``. Rejecting where the adjusted value is ``<= alpha`` controls the
    family-wise error rate at ``alpha`` under any dependence. NaNs (classes without a test) stay NaN and do not
    count in ``m``, as R's ``p.adjust(p, "holm")`` does; statsmodels' ``multipletests(p, method="holm")`` gives the
    same values on NaN-free input.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    finite = ~np.isnan(p)
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p[finite][(p[finite] < 0) | (p[finite] > 1)][:5]}")
    out = np.full_like(p, np.nan)
    values = p[finite]
    m = values.size
    if m == 0:
        return out
    order = np.argsort(values, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * values[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    out[finite] = adjusted
    return out


def percentile_ci(samples: np.ndarray, confidence: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval: the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles.

    NaN samples (resamples where the statistic is undefined) are left out; an all-NaN slice gives NaN. Quantiles use
    numpy's default (linear interpolation, Hyndman & Fan type 7).
    """
    normal_quantile(confidence)  # validates the level
    tail = (1.0 - confidence) / 2.0
    samples = np.asarray(samples, dtype=np.float64)
    if samples.shape[axis] == 0 or np.isnan(samples).all():
        shape = np.delete(np.array(samples.shape), axis)
        return np.full(shape, np.nan), np.full(shape, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an undefined class's all-NaN slice is NaN by design
        low, high = np.nanquantile(samples, [tail, 1.0 - tail], axis=axis)
    return low, high


def bootstrap_p_value(delta_samples: np.ndarray, axis: int = 0) -> np.ndarray:
    """Two-sided bootstrap p-value of ``H0: delta = 0`` from the paired resamples of a difference.

    ``p = min(1, 2 (1 + min(#{d* <= 0}, #{d* >= 0})) / (B + 1))`` over the ``B`` finite samples: twice the smaller
    tail (the level at which the percentile interval just reaches 0), with the +1 that keeps a finite ``B`` from
    claiming ``p = 0``; the smallest value it can report is ``2 / (B + 1)``. Identical runs (every ``d* = 0``)
    give exactly 1. An all-NaN slice gives NaN.
    """
    d = np.asarray(delta_samples, dtype=np.float64)
    valid = ~np.isnan(d)
    num = valid.sum(axis=axis)
    below = (valid & (d <= 0)).sum(axis=axis)
    above = (valid & (d >= 0)).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.minimum(1.0, 2.0 * (1.0 + np.minimum(below, above)) / (num + 1.0))
    return np.where(num > 0, p, np.nan)
