"""Patient-clustered bootstrap: intervals of the mean AUROC and of per-class averages (localization figures).

Method: the cluster (patient) bootstrap (Davison & Hinkley 1997, Bootstrap Methods and their Application, §3.8:
resample the top-level units of hierarchical data). The NIH test split holds several images per patient and a
patient's images are correlated, so the resampling unit is the patient: each resample draws as many patients as the
data hold, uniformly with replacement, and keeps all images of every drawn patient (drawn twice: counted twice). The
interval is the percentile interval (:func:`cxrdist.eval.stats.percentile_ci`) of the statistic over the resamples;
the paired version draws one resample for both runs and reports the interval of their difference and a two-sided
bootstrap p-value (:func:`cxrdist.eval.stats.bootstrap_p_value`). Assumptions: patients are independent and
identically distributed; the statistic is smooth enough for the percentile interval (fine for AUROCs and means
with hundreds of patients; less so for a class with a handful of positive patients).

Computation ("sort once, resample as weights"): a resample is a vector of patient counts (how often each patient
was drawn), drawn once per seed by :func:`resample_counts`; an image's weight is its patient's count, and each
resample's AUROCs come from the per-class sorted scores (:func:`cxrdist.eval.weighted_auroc.resample_auroc`), exactly
equal to ``roc_auc_score`` on the explicitly resampled arrays. A per-class average (``bootstrap_class_means``) is a
ratio of two linear functions of the counts, so all resamples come from one matrix product with per-patient sums.

Undefined statistics: a class without positives or negatives (AUROC) or without items (averages) in the data is
NaN and left out of the mean over classes. In a resample where a class that is in the mean is undefined (e.g.
none of its few positive patients drawn), the per-class value is NaN and the resample is left out of the mean's
interval (counted in ``num_dropped``, with a warning).

Reproducible: the same ``seed``, number of resamples and set of patient ids give the same resamples (with one numpy
version); the AUROCs are then integer arithmetic up to one division (bit-identical anywhere), the class means one
BLAS product (bit-identical on one machine).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cxrdist.eval.stats import bootstrap_p_value, check_scores, holm, normal_quantile, percentile_ci
from cxrdist.eval.weighted_auroc import resample_auroc

__all__ = [
    "BootstrapResult",
    "PairedBootstrapResult",
    "bootstrap_auroc",
    "bootstrap_class_means",
    "cluster_index",
    "paired_bootstrap_auroc",
    "paired_bootstrap_class_means",
    "resample_counts",
]

logger = logging.getLogger(__name__)

_DRAW_BLOCK = 256  # resamples drawn per generator call: fixed, so the draws depend only on (seed, B, P)


@dataclass(frozen=True)
class BootstrapResult:
    """A statistic on the data, its percentile interval and the resamples it came from."""

    estimate: float  # the statistic on the original data (mean over `classes`, or pooled over items)
    ci_low: float
    ci_high: float
    per_class: np.ndarray  # (C,) per-class statistic on the original data, NaN where undefined
    per_class_ci_low: np.ndarray  # (C,)
    per_class_ci_high: np.ndarray  # (C,)
    samples: np.ndarray  # (B,) the statistic per resample, NaN for dropped resamples
    per_class_samples: np.ndarray  # (B, C), NaN where the class is undefined in that resample
    classes: np.ndarray  # (C,) bool: the classes in the mean (defined on the original data)
    num_dropped: int  # resamples left out of the interval of `estimate`
    num_clusters: int  # patients resampled
    confidence: float
    seed: int
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class PairedBootstrapResult:
    """Two runs on the same items, resampled together; ``delta`` is the statistic of A minus that of B."""

    a: BootstrapResult
    b: BootstrapResult
    delta: BootstrapResult  # samples are the paired differences a - b
    p: float  # two-sided bootstrap p-value of delta.estimate (H0: no difference)
    per_class_p: np.ndarray  # (C,)
    per_class_p_holm: np.ndarray  # (C,) Holm-adjusted across the classes with a p-value


def cluster_index(patient_ids: Sequence | np.ndarray, num_items: int) -> tuple[np.ndarray, int]:
    """Map each item's patient id to ``0..P-1`` (sorted ids); returns the ``(num_items,)`` index and ``P``."""
    ids = np.asarray(patient_ids)
    if ids.ndim != 1 or ids.shape[0] != num_items:
        raise ValueError(f"patient_ids must be 1-D with one id per item ({num_items}), got shape {ids.shape}")
    unique, index = np.unique(ids, return_inverse=True)
    return index.astype(np.intp), int(unique.size)


def resample_counts(num_clusters: int, num_resamples: int, seed: int) -> np.ndarray:
    """``(num_resamples, num_clusters)`` counts: how often each cluster is drawn in each resample.

    Each row draws ``num_clusters`` clusters uniformly with replacement (``numpy.random.default_rng(seed)``), so every
    row sums to ``num_clusters``. The dtype is the smallest unsigned integer that holds the largest count.
    """
    if num_clusters < 1 or num_resamples < 1:
        raise ValueError(f"need >= 1 cluster and >= 1 resample, got {num_clusters} and {num_resamples}")
    rng = np.random.default_rng(seed)
    counts = np.empty((num_resamples, num_clusters), dtype=np.uint32)  # a count never exceeds num_clusters
    for start in range(0, num_resamples, _DRAW_BLOCK):
        rows = min(_DRAW_BLOCK, num_resamples - start)
        draws = rng.integers(0, num_clusters, size=(rows, num_clusters))
        flat = draws + (np.arange(rows) * num_clusters)[:, None]
        counts[start : start + rows] = np.bincount(flat.ravel(), minlength=rows * num_clusters).reshape(rows, -1)
    top = int(counts.max())
    dtype = next(t for t in (np.uint8, np.uint16, np.uint32) if top <= np.iinfo(t).max)
    return counts.astype(dtype)


def _summarise(
    point: tuple[float, np.ndarray],
    samples: tuple[np.ndarray, np.ndarray],
    classes: np.ndarray,
    meta: dict,
    what: str,
) -> BootstrapResult:
    """Build a :class:`BootstrapResult`; resamples where ``overall`` is NaN are dropped from its interval, counted."""
    estimate, per_class = point
    overall, per_class_samples = samples
    num_dropped = int(np.isnan(overall).sum()) if classes.any() else 0
    lack = "no positives or no negatives" if what == "AUROC" else "no items"
    warnings = [
        f"class {c}: {lack} in the data, {what} undefined; left out of the mean" for c in np.flatnonzero(~classes)
    ]
    if num_dropped:
        warnings.append(
            f"{num_dropped} of {overall.size} resamples left out of the interval of the mean {what}: "
            f"a class of the mean had {lack} in them"
        )
    low, high = percentile_ci(overall, meta["confidence"])
    class_low, class_high = percentile_ci(per_class_samples, meta["confidence"])
    return BootstrapResult(
        estimate=float(estimate),
        ci_low=float(low),
        ci_high=float(high),
        per_class=per_class,
        per_class_ci_low=class_low,
        per_class_ci_high=class_high,
        samples=overall,
        per_class_samples=per_class_samples,
        classes=classes,
        num_dropped=num_dropped,
        warnings=tuple(warnings),
        **meta,
    )


def _class_mean(per_class: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Unweighted mean over ``classes`` along the last axis (NaN if no class is in the mean)."""
    if not classes.any():
        return np.full(per_class.shape[:-1], np.nan)
    return per_class[..., classes].mean(axis=-1)


def _meta(num_clusters: int, num_resamples: int, seed: int, confidence: float) -> dict:
    normal_quantile(confidence)  # a bad level fails before any work
    if not isinstance(seed, int | np.integer) or num_resamples < 1:
        raise ValueError(f"seed must be an int and num_resamples >= 1, got {seed!r} and {num_resamples}")
    return {"num_clusters": num_clusters, "confidence": confidence, "seed": int(seed)}


def _auroc_result(labels: np.ndarray, scores: np.ndarray, cluster: np.ndarray, counts: np.ndarray, meta: dict):
    per_class = resample_auroc(labels, scores, cluster, np.ones((1, counts.shape[1]), dtype=np.uint8))[0]
    per_class_samples = resample_auroc(labels, scores, cluster, counts)
    classes = ~np.isnan(per_class)
    point = (_class_mean(per_class, classes), per_class)
    return _summarise(point, (_class_mean(per_class_samples, classes), per_class_samples), classes, meta, "AUROC")


def bootstrap_auroc(
    labels: np.ndarray,
    scores: np.ndarray,
    patient_ids: Sequence | np.ndarray,
    num_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Patient-clustered bootstrap of the per-class AUROCs and of their unweighted mean over classes.

    Args:
        labels: ``(N, C)`` (or ``(N,)``) 0/1 ground truth.
        scores: same shape, finite scores.
        patient_ids: ``(N,)`` patient of each image (any sortable ids: ints or strings).
        num_resamples: number of bootstrap resamples ``B``.
        seed: seed of the resampling (same seed, B and patients: bit-identical result).
        confidence: interval level.

    Returns:
        :class:`BootstrapResult`: ``estimate`` = mean AUROC over the classes defined on the data (``per_class``
        equals ``roc_auc_score`` per class), percentile intervals of both, and the resamples.
    """
    labels, scores = check_scores(labels, scores)
    cluster, num_clusters = cluster_index(patient_ids, labels.shape[0])
    meta = _meta(num_clusters, num_resamples, seed, confidence)
    counts = resample_counts(num_clusters, num_resamples, seed)
    return _logged(_auroc_result(labels, scores, cluster, counts, meta))


def paired_bootstrap_auroc(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    patient_ids: Sequence | np.ndarray,
    num_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedBootstrapResult:
    """Paired patient-clustered bootstrap of two runs' AUROCs on the same images (rows aligned, same labels).

    Both runs are evaluated on every resample, so ``delta`` (A minus B: mean AUROC and per class) has the interval
    of the paired difference; ``p`` / ``per_class_p`` are two-sided bootstrap p-values, ``per_class_p_holm`` their
    Holm adjustment across classes. Arguments as :func:`bootstrap_auroc`.
    """
    labels, scores_a = check_scores(labels, scores_a, "scores_a")
    _, scores_b = check_scores(labels, scores_b, "scores_b")
    cluster, num_clusters = cluster_index(patient_ids, labels.shape[0])
    meta = _meta(num_clusters, num_resamples, seed, confidence)
    counts = resample_counts(num_clusters, num_resamples, seed)
    a = _auroc_result(labels, scores_a, cluster, counts, meta)
    b = _auroc_result(labels, scores_b, cluster, counts, meta)
    return _paired(a, b, meta, "AUROC")


def _paired(a: BootstrapResult, b: BootstrapResult, meta: dict, what: str) -> PairedBootstrapResult:
    delta = _summarise(
        (a.estimate - b.estimate, a.per_class - b.per_class),
        (a.samples - b.samples, a.per_class_samples - b.per_class_samples),
        a.classes & b.classes,
        meta,
        what,
    )
    per_class_p = np.where(np.isnan(delta.per_class), np.nan, bootstrap_p_value(delta.per_class_samples))
    return PairedBootstrapResult(
        a=a,
        b=b,
        delta=_logged(delta),
        p=float(bootstrap_p_value(delta.samples)),
        per_class_p=per_class_p,
        per_class_p_holm=holm(per_class_p),
    )


def _logged(result: BootstrapResult) -> BootstrapResult:
    for warning in result.warnings:
        logger.warning(warning)
    return result


def _check_items(values: np.ndarray, class_ids: np.ndarray, num_classes: int | None, what: str = "values"):
    values, class_ids = np.asarray(values), np.asarray(class_ids)
    if values.ndim != 1 or class_ids.shape != values.shape or values.size == 0:
        raise ValueError(
            f"{what} and class_ids must be non-empty 1-D arrays of one length, got {values.shape} and {class_ids.shape}"
        )
    bad = np.flatnonzero(~np.isfinite(values.astype(np.float64)))
    if bad.size:
        raise ValueError(f"{what}[{bad[0]}] is {values[bad[0]]}: every item needs a finite value ({bad.size} do not)")
    if not np.issubdtype(class_ids.dtype, np.integer):
        raise ValueError(f"class_ids must be integers (class indices), got dtype {class_ids.dtype}")
    num_classes = int(class_ids.max()) + 1 if num_classes is None else num_classes
    if class_ids.min() < 0 or class_ids.max() >= num_classes:
        raise ValueError(f"class_ids must lie in [0, {num_classes}), got {class_ids.min()}..{class_ids.max()}")
    return values.astype(np.float64), class_ids.astype(np.intp), num_classes


def _class_means(counts: np.ndarray, sums: np.ndarray, items: np.ndarray, classes: np.ndarray, average: str):
    """Per-class weighted means ``(B, C)`` and the overall statistic ``(B,)`` for cluster ``counts`` ``(B, P)``."""
    s = np.empty((counts.shape[0], sums.shape[1]))
    n = np.empty_like(s)
    for start in range(0, counts.shape[0], _DRAW_BLOCK):  # bounds the float64 copy of the counts
        chunk = counts[start : start + _DRAW_BLOCK].astype(np.float64)
        s[start : start + _DRAW_BLOCK], n[start : start + _DRAW_BLOCK] = chunk @ sums, chunk @ items
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = s / n
        if average == "classes":
            return _class_mean(per_class, classes), per_class
        return s[:, classes].sum(axis=1) / n[:, classes].sum(axis=1), per_class


def _means_result(values, cluster, class_ids, num_classes, counts, average, meta) -> BootstrapResult:
    if average not in ("classes", "items"):
        raise ValueError(f"average must be 'classes' (unweighted over classes) or 'items' (pooled), got {average!r}")
    num_clusters = counts.shape[1]
    key = cluster * num_classes + class_ids
    sums = np.bincount(key, weights=values, minlength=num_clusters * num_classes).reshape(num_clusters, -1)
    items = np.bincount(key, minlength=num_clusters * num_classes).reshape(num_clusters, -1).astype(np.float64)
    classes = items.sum(axis=0) > 0
    overall, per_class = _class_means(np.ones((1, num_clusters)), sums, items, classes, average)
    samples = _class_means(counts, sums, items, classes, average)
    return _summarise((overall[0], per_class[0]), samples, classes, meta, "average")


def bootstrap_class_means(
    values: np.ndarray,
    patient_ids: Sequence | np.ndarray,
    class_ids: np.ndarray,
    num_classes: int | None = None,
    average: str = "classes",
    num_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Patient-clustered bootstrap of a per-item figure averaged per class, then over classes (or pooled).

    For localization: items are GT boxes (values: hit indicators at a threshold, or best IoUs) or (image, class)
    pairs (values: false-positive counts, whose per-class mean is the average FP per image).

    Args:
        values: ``(M,)`` finite value per item (bool accepted).
        patient_ids: ``(M,)`` patient of each item's image.
        class_ids: ``(M,)`` class index of each item, in ``[0, num_classes)``.
        num_classes: number of classes ``C`` (default: largest class id + 1); classes without items are NaN.
        average: ``"classes"``: ``estimate`` is the unweighted mean over classes with items (kim2021's Mean);
            ``"items"``: the pooled mean over all items (fang2021's mean over boxes).
        num_resamples, seed, confidence: as :func:`bootstrap_auroc`.

    Returns:
        :class:`BootstrapResult`; ``per_class`` is the mean of ``values`` per class.
    """
    values, class_ids, num_classes = _check_items(values, class_ids, num_classes)
    cluster, num_clusters = cluster_index(patient_ids, values.size)
    meta = _meta(num_clusters, num_resamples, seed, confidence)
    counts = resample_counts(num_clusters, num_resamples, seed)
    return _logged(_means_result(values, cluster, class_ids, num_classes, counts, average, meta))


def paired_bootstrap_class_means(
    values_a: np.ndarray,
    values_b: np.ndarray,
    patient_ids: Sequence | np.ndarray,
    class_ids: np.ndarray,
    num_classes: int | None = None,
    average: str = "classes",
    num_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedBootstrapResult:
    """Paired bootstrap of two runs' per-item figures on the same items (A minus B); see :func:`paired_bootstrap_auroc`.

    ``values_a[i]`` and ``values_b[i]`` are the same item (box or pair) of the two runs; the other arguments are as
    :func:`bootstrap_class_means`.
    """
    values_a, class_ids, num_classes = _check_items(values_a, class_ids, num_classes, "values_a")
    values_b, _, _ = _check_items(values_b, class_ids, num_classes, "values_b")
    cluster, num_clusters = cluster_index(patient_ids, values_a.size)
    meta = _meta(num_clusters, num_resamples, seed, confidence)
    counts = resample_counts(num_clusters, num_resamples, seed)
    a = _means_result(values_a, cluster, class_ids, num_classes, counts, average, meta)
    b = _means_result(values_b, cluster, class_ids, num_classes, counts, average, meta)
    return _paired(a, b, meta, "average")
