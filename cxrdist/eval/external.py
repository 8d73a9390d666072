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
from cxrdist.eval.delong import delong_auroc
from cxrdist.eval.stats import percentile_ci
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
    labels, scores, mask = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64), np.asarray(mask)
    cluster, num_clusters = cluster_index(patient_ids, labels.shape[0])
    counts = resample_counts(num_clusters, num_resamples, seed)
    ones = np.ones((1, num_clusters), dtype=counts.dtype)
    per_class, samples = [], []
    for c in range(labels.shape[1]):
        keep = mask[:, c] == 1
        point = resample_auroc(labels[keep][:, [c]], scores[keep][:, [c]], cluster[keep], ones)[0, 0]
        if np.isnan(point):
            continue
        per_class.append(point)
        samples.append(resample_auroc(labels[keep][:, [c]], scores[keep][:, [c]], cluster[keep], counts)[:, 0])
    if not per_class:
        return {"estimate": None, "ci95": None, "num_dropped": 0, "num_clusters": num_clusters}
    means = np.stack(samples, axis=1).mean(axis=1)
    kept = means[~np.isnan(means)]
    lo, hi = percentile_ci(kept, confidence) if kept.size else (np.nan, np.nan)
    return {
        "estimate": float(np.mean(per_class)),
        "ci95": None if not kept.size else [float(lo), float(hi)],
        "num_dropped": int(num_resamples - kept.size),
        "num_resamples": num_resamples,
        "num_clusters": num_clusters,
        "seed": seed,
        "confidence": confidence,
    }


def _fmt(v: float | None, ci: list[float] | None = None) -> str:
    if v is None:
        return "—"
    return f"{v:.4f}" if not ci else f"{v:.4f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def external_section_md(nih: Mapping[str, Any] | None, external: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: NIH test vs each external set per class (AUROC), and each set's mean over its own classes.

    ``nih``: the NIH test metrics.json (or None); ``external``: set name → its metrics.json. A class a set does
    not annotate reads "n/a"; the "shared mean" row is each column's mean over the classes every listed external
    set annotates (NIH included on the same classes), so the columns compare like with like.
    """
    names = list(external)
    cols = (["NIH test"] if nih else []) + names
    aurocs = ([nih["auroc"]] if nih else []) + [external[n]["auroc"] for n in names]
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
    for a in aurocs:
        vals = [a["per_class"][c] for c in shared if a["per_class"].get(c) is not None]
        shared_means.append(_fmt(float(np.mean(vals)) if vals else None))
    lines.append(f"| **mean (shared {len(shared)})** | " + " | ".join(shared_means) + " |")
    lines.append("")
    lines.append(
        f"Shared classes: {', '.join(shared) or 'none'}. n/a: not annotated in that set (excluded). "
        "[low, high]: DeLong 95% interval on the set's annotated images."
    )
    for n in names:
        a = external[n]["auroc"]
        extra = f"; not annotated: {', '.join(a['not_annotated'])}" if a.get("not_annotated") else ""
        lines.append(f"- {n}: {a['num_samples']} images{extra} ({external[n].get('shards', '?')})")
    return "\n".join(lines)
