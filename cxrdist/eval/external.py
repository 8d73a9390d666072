"""AUROC on an external set, over the classes it annotates, and the report's "external" section.

An external shard root carries a per-sample label mask (``label_mask`` in each sample's JSON): 0 for a class the
dataset does not annotate, and for an uncertain label under ``--uncertain ignore``. A class is scored on the samples
whose mask is 1; a class no sample annotates is "not annotated" (None, named in ``not_annotated``) and, like a class
with one label value, is left out of the mean. Nothing is a silent 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrdist.eval.bootstrap import cluster_index, resample_counts
from cxrdist.eval.classification import auroc_per_class
from cxrdist.eval.delong import delong_auroc, delong_paired
from cxrdist.eval.stats import bootstrap_p_value, holm, percentile_ci
from cxrdist.eval.weighted_auroc import resample_auroc
from cxrdist.labels import LABELS


def masked_auroc(
    labels: np.ndarray, scores: np.ndarray, mask: np.ndarray, class_names: Sequence[str] = LABELS
) -> dict[str, Any]:
    """Per-class AUROC over the samples whose ``mask`` is 1, and the mean over the defined classes.

    Returns :func:`~cxrdist.eval.classification.auroc_per_class`'s keys (``positives`` counts annotated samples
    only) plus ``not_annotated`` (class names), ``annotated_samples`` {name: int}, ``ci95`` {name: [low, high] or
    None} (DeLong, on the annotated samples; external sets are small) and ``masked`` True.
    """
    labels, scores, mask = np.asarray(labels), np.asarray(scores), np.asarray(mask)
    if mask.shape != labels.shape:
        raise ValueError(f"mask must have the labels' shape {labels.shape}, got {mask.shape}")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError(f"mask must be 0/1, found values {np.unique(mask)[:10].tolist()}")
    per_class: dict[str, float | None] = {}
    positives, counts, warnings, not_annotated, ci = {}, {}, [], [], {}
    for c, name in enumerate(class_names):
        keep = mask[:, c] == 1
        counts[name] = int(keep.sum())
        positives[name] = int(labels[keep, c].sum())
        ci[name] = None
        if not keep.any():
            per_class[name] = None
            not_annotated.append(name)
            continue
        one = auroc_per_class(labels[keep][:, [c]], scores[keep][:, [c]], [name])
        per_class[name] = one["per_class"][name]
        warnings += one["warnings"]
        if per_class[name] is not None:
            d = delong_auroc(labels[keep, c], scores[keep, c])
            ci[name] = None if np.isnan(d.variance[0]) else [float(d.ci_low[0]), float(d.ci_high[0])]
    defined = [v for v in per_class.values() if v is not None]
    return {
        "per_class": per_class,
        "mean": float(np.mean(defined)) if defined else None,
        "num_defined": len(defined),
        "positives": positives,
        "num_samples": int(labels.shape[0]),
        "warnings": warnings,
        "not_annotated": not_annotated,
        "annotated_samples": counts,
        "ci95": ci,
        "masked": True,
    }


def _masked_class_aurocs(
    labels: np.ndarray, scores: np.ndarray, mask: np.ndarray, cluster: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per class on its annotated images: the AUROC on the data ``(C,)`` and in each resample ``(B, C)`` (NaN where
    undefined); one row of ``counts`` per resample, one column per patient (the same rows for every class)."""
    ones = np.ones((1, counts.shape[1]), dtype=counts.dtype)
    point = np.full(labels.shape[1], np.nan)
    samples = np.full((counts.shape[0], labels.shape[1]), np.nan)
    for c in range(labels.shape[1]):
        keep = mask[:, c] == 1
        y, s, k = labels[keep][:, [c]], scores[keep][:, [c]], cluster[keep]
        point[c] = resample_auroc(y, s, k, ones)[0, 0]
        if not np.isnan(point[c]):
            samples[:, c] = resample_auroc(y, s, k, counts)[:, 0]
    return point, samples


def _arrays(labels: Any, scores: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels, scores, mask = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64), np.asarray(mask)
    if not labels.shape == scores.shape == mask.shape or labels.ndim != 2:
        raise ValueError(f"labels, scores and mask must be (N, C) of one shape, got {labels.shape}, {scores.shape} "
                         f"and {mask.shape}")  # fmt: skip
    return labels, scores, mask


def masked_bootstrap_mean(
    labels: np.ndarray,
    scores: np.ndarray,
    mask: np.ndarray,
    patient_ids: Sequence | np.ndarray,
    num_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Patient-clustered bootstrap interval of the mean AUROC over the classes defined on the annotated images.

    Patients are resampled once per resample for all classes (the same counts as
    :func:`cxrdist.eval.bootstrap.bootstrap_auroc`); each class's AUROC in a resample uses its annotated images
    only. A resample in which a class of the mean has no positive or no negative is dropped (counted).
    """
    labels, scores, mask = _arrays(labels, scores, mask)
    cluster, num_clusters = cluster_index(patient_ids, labels.shape[0])
    counts = resample_counts(num_clusters, num_resamples, seed)
    point, samples = _masked_class_aurocs(labels, scores, mask, cluster, counts)
    defined = ~np.isnan(point)
    if not defined.any():
        return {"estimate": None, "ci95": None, "num_dropped": 0, "num_clusters": num_clusters}
    means = samples[:, defined].mean(axis=1)
    kept = means[~np.isnan(means)]
    lo, hi = percentile_ci(kept, confidence) if kept.size else (np.nan, np.nan)
    return {
        "estimate": float(np.mean(point[defined])),
        "ci95": None if not kept.size else [float(lo), float(hi)],
        "num_dropped": int(num_resamples - kept.size),
        "num_resamples": num_resamples,
        "num_clusters": num_clusters,
        "seed": seed,
        "confidence": confidence,
    }


def _num(v: Any) -> float | None:
    return None if v is None or np.isnan(v) else float(v)


def _paired_mean(
    labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, mask: np.ndarray, cluster: np.ndarray,
    num_clusters: int, num_resamples: int, seed: int, confidence: float,
) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """The paired patient bootstrap of A − B's mean AUROC over the classes defined on the annotated images."""
    counts = resample_counts(num_clusters, num_resamples, seed)
    (pa, sa), (pb, sb) = (_masked_class_aurocs(labels, s, mask, cluster, counts) for s in (scores_a, scores_b))
    defined = ~np.isnan(pa) & ~np.isnan(pb)
    if defined.any():
        ma, mb = sa[:, defined].mean(axis=1), sb[:, defined].mean(axis=1)
        delta = ma - mb
        lo, hi = percentile_ci(delta, confidence)
        point_a, point_b = float(pa[defined].mean()), float(pb[defined].mean())
        mean = {"auroc_a": point_a, "auroc_b": point_b, "delta": point_a - point_b, "bootstrap": [_num(lo), _num(hi)],
                "p": _num(bootstrap_p_value(delta)), "num_dropped": int(np.isnan(delta).sum())}  # fmt: skip
    else:
        mean = {"auroc_a": None, "auroc_b": None, "delta": None, "bootstrap": [None, None], "p": None, "num_dropped": 0}
    dropped = f"{mean['num_dropped']} of {num_resamples} resamples left out of the interval of the mean AUROC: a "
    warnings = [dropped + "class of the mean had no positives or no negatives in them"] if mean["num_dropped"] else []
    return mean, warnings


def masked_paired_comparison(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    mask: np.ndarray,
    patient_ids: Sequence | np.ndarray,
    num_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    class_names: Sequence[str] = LABELS,
) -> dict[str, Any]:
    """A − B on one external set, rows aligned: :func:`cxrdist.eval.compare.paired_comparison`'s dict, each class
    scored on its annotated images only (``mask`` 1).

    Per class: DeLong's test for two correlated AUROCs on that class's annotated images, p adjusted by Holm across
    the classes with a test (a class the set does not annotate has none: None, its note says so). Mean (over the
    classes defined on the annotated images, as :func:`masked_bootstrap_mean`): the paired patient bootstrap of the
    difference, both runs on the same resamples; a resample where a class of the mean is undefined is dropped.
    With every label annotated this is exactly ``paired_comparison``.
    """
    labels, scores_a, mask = _arrays(labels, scores_a, mask)
    _, scores_b, _ = _arrays(labels, scores_b, mask)
    per_class, p = {}, np.full(len(class_names), np.nan)
    for c, name in enumerate(class_names):
        keep = mask[:, c] == 1
        if not keep.any():
            per_class[name] = {"auroc_a": None, "auroc_b": None, "delta": None, "delong": [None, None], "p": None,
                               "positives": 0, "note": None}  # fmt: skip
            continue
        d = delong_paired(labels[keep][:, [c]], scores_a[keep][:, [c]], scores_b[keep][:, [c]], confidence)
        p[c] = d.p[0]
        per_class[name] = {"auroc_a": _num(d.auroc_a[0]), "auroc_b": _num(d.auroc_b[0]), "delta": _num(d.delta[0]),
                           "delong": [_num(d.ci_low[0]), _num(d.ci_high[0])], "p": _num(d.p[0]),
                           "positives": int(d.num_positive[0]), "note": d.reasons[0]}  # fmt: skip
    for name, adjusted in zip(class_names, holm(p)):
        per_class[name]["p_holm"] = _num(adjusted)
    cluster, num_clusters = cluster_index(patient_ids, labels.shape[0])
    mean, warnings = _paired_mean(labels, scores_a, scores_b, mask, cluster, num_clusters, num_resamples, seed,
                                  confidence)  # fmt: skip
    return {
        "confidence": confidence,
        "num_resamples": num_resamples,
        "seed": seed,
        "num_images": int(labels.shape[0]),
        "num_patients": num_clusters,
        "per_class": per_class,
        "mean": mean,
        "not_annotated": [n for c, n in enumerate(class_names) if not (mask[:, c] == 1).any()],
        "warnings": warnings,
    }


def _fmt(v: float | None, ci: list[float] | None = None) -> str:
    if v is None:
        return "—"
    return f"{v:.4f}" if not ci else f"{v:.4f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _nih_like(nih: Mapping[str, Any]) -> dict[str, Any]:
    """The NIH test ``auroc`` with the external columns' intervals: DeLong per class, patient bootstrap of the mean
    (from ``intervals`` where the evaluator wrote them)."""
    iv = nih.get("intervals")
    if not iv:
        return dict(nih["auroc"])
    ci = {c: r["delong"] for c, r in iv["per_class"].items() if None not in r["delong"]}
    mean = iv["mean"]["bootstrap"]
    return dict(nih["auroc"]) | {"ci95": ci, "bootstrap": {"ci95": None if None in mean else mean}}


def external_section_md(
    nih: Mapping[str, Any] | None,
    external: Mapping[str, Mapping[str, Any]],
    shared_ci: Mapping[str, list[float] | None] | None = None,
) -> str:
    """Markdown: NIH test vs each external set per class (AUROC), and each set's mean over its own classes.

    ``nih``: the NIH test metrics.json (or None); ``external``: set name → its metrics.json. A class a set does
    not annotate reads "n/a"; the "shared mean" row is each column's mean over the classes every listed external
    set annotates (NIH included on the same classes), so the columns compare like with like. Every column carries the
    same intervals: DeLong per class, the patient-clustered bootstrap for the mean over its own classes, and for the
    shared mean where ``shared_ci`` (column name → interval) has one.
    """
    names = list(external)
    cols = (["NIH test"] if nih else []) + names
    aurocs = ([_nih_like(nih)] if nih else []) + [external[n]["auroc"] for n in names]
    shared = [c for c in LABELS if all(c not in external[n]["auroc"].get("not_annotated", []) for n in names)]
    lines = [
        "| class | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for c in LABELS:
        cells = []
        for a in aurocs:
            ci = (a.get("ci95") or {}).get(c)
            cells.append("n/a" if c in a.get("not_annotated", []) else _fmt(a["per_class"].get(c), ci))
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append("| **mean (own classes)** | " + " | ".join(_fmt(a["mean"], (a.get("bootstrap") or {}).get("ci95"))
                                                          for a in aurocs) + " |")  # fmt: skip
    shared_means = []
    for col, a in zip(cols, aurocs):
        vals = [a["per_class"][c] for c in shared if a["per_class"].get(c) is not None]
        shared_means.append(_fmt(float(np.mean(vals)) if vals else None, (shared_ci or {}).get(col)))
    lines.append(f"| **mean (shared {len(shared)})** | " + " | ".join(shared_means) + " |")
    lines.append("")
    lines.append(
        f"Shared classes: {', '.join(shared) or 'none'}. n/a: not annotated in that set (excluded). "
        "[low, high]: DeLong 95% interval on the set's annotated images; the means': patient-clustered bootstrap."
    )
    for n in names:
        a = external[n]["auroc"]
        extra = f"; not annotated: {', '.join(a['not_annotated'])}" if a.get("not_annotated") else ""
        lines.append(f"- {n}: {a['num_samples']} images{extra} ({external[n].get('shards', '?')})")
    return "\n".join(lines)
