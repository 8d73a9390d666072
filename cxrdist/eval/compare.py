"""Intervals on reported numbers and paired comparisons of two runs, as JSON-able dicts and Markdown tables.

Pure functions over arrays (the statistics are in :mod:`cxrdist.eval.delong` and :mod:`cxrdist.eval.bootstrap`):

- :func:`auroc_intervals`: per class, the AUROC with a DeLong 95 % CI (images taken as independent) and a
  patient-clustered bootstrap CI; the mean AUROC with its clustered bootstrap CI. On NIH (several images per
  test patient) the clustered interval is the one to read; DeLong's is shown beside it, labelled.
- :func:`localization_intervals`: the fixed-threshold localization figures (kim2021 accuracy at T(IoU), mean over
  classes; fang2021 best-box IoU, mean over boxes) with clustered bootstrap CIs, from ``per_box`` of
  :func:`~cxrdist.eval.localization.evaluate_localization`. The oracle variant gets none: it is no headline.
- :func:`paired_comparison`: A − B per class by DeLong's test for correlated AUROCs (Holm across classes) and for
  the mean AUROC by the paired patient bootstrap of the difference (same resamples for both runs).

Undefined values are ``None`` (JSON ``null``) and print as ``n/a``; the reason travels in ``notes``/``warnings``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrdist.eval.bootstrap import (
    bootstrap_auroc,
    bootstrap_class_means,
    paired_bootstrap_auroc,
    paired_bootstrap_class_means,
)
from cxrdist.eval.delong import delong_auroc, delong_paired
from cxrdist.eval.localization import KIM_IOU_T, ORACLE
from cxrdist.labels import BOX_CLASSES, LABELS

NUM_RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95
# NIH ChestX-ray14 image names are <patient id, 8 digits>_<follow-up, 3 digits>.png (Data_Entry_2017's README).
_NIH_KEY = re.compile(r"^(\d{8})_\d{3}$")


def _num(v: Any) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def _ci(lo: Any, hi: Any) -> list[float | None]:
    return [_num(lo), _num(hi)]


def patients_of(keys: Sequence, patient_ids: Sequence | np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """The patient of each image, and a sentence saying where it came from.

    Saved ids win; else the NIH file-name convention (``00000001_000``: patient 1) when every key follows it;
    else each image is its own cluster, which the sentence says (the intervals are then too narrow wherever a
    patient has several images).
    """
    if patient_ids is not None and len(patient_ids) == len(keys):
        return np.asarray(patient_ids), "patients from the ids saved with the predictions"
    found = [_NIH_KEY.match(str(k)) for k in keys]
    if found and all(found):
        return np.array([int(m.group(1)) for m in found]), "patients from the NIH image names (<patient>_<follow-up>)"
    return np.arange(len(keys)), "no patient ids: each image resampled alone (too narrow if patients repeat)"


def auroc_intervals(
    labels: np.ndarray,
    scores: np.ndarray,
    patient_ids: Sequence | np.ndarray,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
    class_names: Sequence[str] = LABELS,
) -> dict[str, Any]:
    """Per-class AUROC with DeLong and clustered-bootstrap CIs, and the mean AUROC with its bootstrap CI."""
    d = delong_auroc(labels, scores, confidence)
    b = bootstrap_auroc(labels, scores, patient_ids, num_resamples, seed, confidence)
    per_class = {
        name: {
            "auroc": _num(d.auroc[c]),
            "delong": _ci(d.ci_low[c], d.ci_high[c]),
            "bootstrap": _ci(b.per_class_ci_low[c], b.per_class_ci_high[c]),
            "positives": int(d.num_positive[c]),
            "note": d.reasons[c],
        }
        for c, name in enumerate(class_names)
    }
    return {
        "confidence": confidence,
        "num_resamples": num_resamples,
        "seed": seed,
        "num_images": int(len(labels)),
        "num_patients": int(b.num_clusters),
        "per_class": per_class,
        "mean": {"auroc": _num(b.estimate), "bootstrap": _ci(b.ci_low, b.ci_high), "num_dropped": b.num_dropped},
        "warnings": list(b.warnings),
    }


def _box_arrays(
    loc: Mapping[str, Any], patient_of_key: Mapping[str, Any], items: str = "per_box"
) -> tuple[np.ndarray, np.ndarray, int]:
    """Patient, class and number of classes of each item of ``loc[items]`` (GT boxes, or (image, class) pairs)."""
    keys = list(loc[items]["key"])
    missing = sorted({k for k in keys if k not in patient_of_key})
    if missing:
        raise ValueError(f"localization {items}: no patient for {len(missing)} image(s), e.g. {missing[:3]}")
    cls = np.asarray(loc[items]["class_idx"], dtype=np.int64)
    num_classes = max(len(BOX_CLASSES), int(cls.max()) + 1 if cls.size else 0)
    return np.array([patient_of_key[k] for k in keys]), cls, num_classes


def _afp_values(loc: Mapping[str, Any], variant: str) -> dict[str, np.ndarray]:
    """Per-pair FP counts of the AFP figures ``afp_at_iou>T`` (kim2021's T on Wang's IoU grid) of ``variant``;
    none for results written before the counts were kept (``per_pair``)."""
    fp = (loc.get("per_pair") or {}).get("fp", {}).get(variant, {}).get("iou", {})
    return {f"afp_at_iou>{t:g}": np.asarray(fp[f"{t:g}"], dtype=np.float64) for t in KIM_IOU_T if f"{t:g}" in fp}


def localization_intervals(
    loc: Mapping[str, Any],
    patient_of_key: Mapping[str, Any],
    num_resamples: int = NUM_RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Clustered bootstrap CIs of the fixed-threshold localization figures: ``{variant: {figure: {value, ci}}}``.

    Figures: ``acc_at_iou>T`` (hit = best IoU > T, mean over classes: kim2021's Mean) for each kim2021 threshold,
    ``best_box_iou`` (best-box IoU, mean over boxes: fang2021's 0.3014), and ``afp_at_iou>T`` (Wang et al. 2017's
    average false positives per image at T(IoU), mean over classes; items: the (image, class) pairs of ``per_pair``,
    resampled with the same patient weights). Patients come from ``patient_of_key``.
    """
    pids, cls, num_classes = _box_arrays(loc, patient_of_key)
    pair_pids, pair_cls, _ = _box_arrays(loc, patient_of_key, "per_pair") if loc.get("per_pair") else (None,) * 3
    out: dict[str, Any] = {}
    kw = {"num_classes": num_classes, "num_resamples": num_resamples, "seed": seed, "confidence": confidence}
    for variant, best in loc["per_box"]["best_iou"].items():
        if variant == ORACLE or not cls.size:
            continue
        best = np.asarray(best, dtype=np.float64)
        figs = {f"acc_at_iou>{t:g}": bootstrap_class_means(best > t, pids, cls, average="classes", **kw)
                for t in KIM_IOU_T}  # fmt: skip
        figs["best_box_iou"] = bootstrap_class_means(best, pids, cls, average="items", **kw)
        for name, fp in _afp_values(loc, variant).items():
            figs[name] = bootstrap_class_means(fp, pair_pids, pair_cls, average="classes", **kw)
        out[variant] = {k: {"value": _num(r.estimate), "ci": _ci(r.ci_low, r.ci_high)} for k, r in figs.items()}
    return out


def paired_localization(
    loc_a: Mapping[str, Any],
    loc_b: Mapping[str, Any],
    patient_of_key: Mapping[str, Any],
    num_resamples: int = NUM_RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """A − B of the fixed-threshold localization figures (as :func:`localization_intervals`) by the paired patient
    bootstrap: ``{variant: {figure: {a, b, delta, ci, p}}}``. Both runs must list the same boxes in the same order.
    The AFP figures (lower is better) appear when both runs kept their per-pair FP counts."""
    pa, pb = loc_a["per_box"], loc_b["per_box"]
    if list(pa["key"]) != list(pb["key"]) or list(pa["class_idx"]) != list(pb["class_idx"]):
        raise ValueError("the two runs' localization results hold other boxes: compare runs on the same bbox split")
    pids, cls, num_classes = _box_arrays(loc_a, patient_of_key)
    pairs = bool(loc_a.get("per_pair") and loc_b.get("per_pair"))
    if pairs and any(list(loc_a["per_pair"][k]) != list(loc_b["per_pair"][k]) for k in ("key", "class_idx")):
        raise ValueError("the two runs' localization results hold other (image, class) pairs: same bbox split?")
    pair_pids, pair_cls, _ = _box_arrays(loc_a, patient_of_key, "per_pair") if pairs else (None,) * 3
    kw = {"num_classes": num_classes, "num_resamples": num_resamples, "seed": seed, "confidence": confidence}
    out: dict[str, Any] = {}
    for variant in [v for v in pa["best_iou"] if v != ORACLE and v in pb["best_iou"]]:
        a, b = (np.asarray(p["best_iou"][variant], dtype=np.float64) for p in (pa, pb))
        figs = {f"acc_at_iou>{t:g}": paired_bootstrap_class_means(a > t, b > t, pids, cls, average="classes", **kw)
                for t in KIM_IOU_T}  # fmt: skip
        figs["best_box_iou"] = paired_bootstrap_class_means(a, b, pids, cls, average="items", **kw)
        afp_a, afp_b = (_afp_values(loc, variant) if pairs else {} for loc in (loc_a, loc_b))
        for name in [n for n in afp_a if n in afp_b]:
            figs[name] = paired_bootstrap_class_means(afp_a[name], afp_b[name], pair_pids, pair_cls, **kw)
        out[variant] = {
            k: {"a": _num(r.a.estimate), "b": _num(r.b.estimate), "delta": _num(r.delta.estimate),
                "ci": _ci(r.delta.ci_low, r.delta.ci_high), "p": _num(r.p)}
            for k, r in figs.items()
        }  # fmt: skip
    return out


def paired_comparison(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    patient_ids: Sequence | np.ndarray,
    num_resamples: int = NUM_RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
    class_names: Sequence[str] = LABELS,
) -> dict[str, Any]:
    """A − B on the same images: per class DeLong's paired test (Holm-adjusted), the mean by the paired bootstrap."""
    d = delong_paired(labels, scores_a, scores_b, confidence)
    pb = paired_bootstrap_auroc(labels, scores_a, scores_b, patient_ids, num_resamples, seed, confidence)
    per_class = {
        name: {
            "auroc_a": _num(d.auroc_a[c]),
            "auroc_b": _num(d.auroc_b[c]),
            "delta": _num(d.delta[c]),
            "delong": _ci(d.ci_low[c], d.ci_high[c]),
            "p": _num(d.p[c]),
            "p_holm": _num(d.p_holm[c]),
            "positives": int(d.num_positive[c]),
            "note": d.reasons[c],
        }
        for c, name in enumerate(class_names)
    }
    mean = {
        "auroc_a": _num(pb.a.estimate),
        "auroc_b": _num(pb.b.estimate),
        "delta": _num(pb.delta.estimate),
        "bootstrap": _ci(pb.delta.ci_low, pb.delta.ci_high),
        "p": _num(pb.p),
    }
    return {
        "confidence": confidence,
        "num_resamples": num_resamples,
        "seed": seed,
        "num_images": int(len(labels)),
        "num_patients": int(pb.delta.num_clusters),
        "per_class": per_class,
        "mean": mean,
        "warnings": sorted(set(pb.a.warnings) | set(pb.b.warnings)),
    }


def _f(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _fci(ci: Sequence[float | None], digits: int = 3) -> str:
    return "n/a" if None in ci else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _fp(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def inside(value: float | None, ci: Sequence[float | None]) -> str:
    """'yes'/'**no**' whether a published value lies in the interval; '—' without a value or interval."""
    if value is None or None in ci:
        return "—"
    return "yes" if ci[0] <= value <= ci[1] else "**no**"


def intervals_table_md(iv: Mapping[str, Any], published: Mapping[str, float] | None = None) -> str:
    """Per-class AUROC with both CIs, the published value and whether it lies inside the clustered interval."""
    pct = f"{iv['confidence']:.0%}"
    head = f"| class | positives | AUROC | {pct} CI, patient bootstrap | {pct} CI, DeLong (images independent) |"
    lines = [head + (" published | inside? |" if published else ""), "|---" * (7 if published else 5) + "|"]
    for name, r in iv["per_class"].items():
        row = f"| {name} | {r['positives']} | {_f(r['auroc'])} | {_fci(r['bootstrap'])} | {_fci(r['delong'])} |"
        if published:
            pub = published.get(name)
            row += f" {_f(pub)} | {inside(pub, r['bootstrap'])} |"
        lines.append(row)
    m = iv["mean"]
    row = f"| **Mean** | | **{_f(m['auroc'])}** | {_fci(m['bootstrap'])} | — |"
    if published:
        pub = next((v for k, v in published.items() if k.lower() in ("mean", "average")), None)
        row += f" {_f(pub)} | {inside(pub, m['bootstrap'])} |"
    lines.append(row)
    lines += [
        "",
        f"- Intervals: {iv['num_images']} images of {iv['num_patients']} patients; patient-clustered percentile "
        f"bootstrap ({iv['num_resamples']} resamples, seed {iv['seed']}; patients resampled, not images) and DeLong "
        "(Wald, treats images as independent: too narrow where patients have several images). 'inside?' uses the "
        "patient bootstrap.",
    ]
    lines += [f"- {name}: {r['note']}" for name, r in iv["per_class"].items() if r["note"]]
    lines += [f"- {w}" for w in iv["warnings"]]
    return "\n".join(lines)


def comparison_table_md(cmp: Mapping[str, Any], name_a: str, name_b: str) -> str:
    """The paired comparison as Markdown: per class Δ with DeLong CI, p and Holm p; the mean with bootstrap."""
    pct = f"{cmp['confidence']:.0%}"
    lines = [
        f"| class | positives | {name_a} | {name_b} | Δ (A − B) | {pct} CI | p (DeLong) | p (Holm) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in cmp["per_class"].items():
        lines.append(
            f"| {name} | {r['positives']} | {_f(r['auroc_a'])} | {_f(r['auroc_b'])} | {_f(r['delta'])} | "
            f"{_fci(r['delong'])} | {_fp(r['p'])} | {_fp(r['p_holm'])} |"
        )
    m = cmp["mean"]
    lines.append(
        f"| **Mean** | | {_f(m['auroc_a'])} | {_f(m['auroc_b'])} | **{_f(m['delta'])}** | {_fci(m['bootstrap'])} | "
        f"{_fp(m['p'])} (bootstrap) | — |"
    )
    lines += [
        "",
        f"- A = {name_a}, B = {name_b}; {cmp['num_images']} images of {cmp['num_patients']} patients, the same keys "
        f"in both. Per class: DeLong's test for two correlated AUROCs, p adjusted across classes by Holm. Mean: "
        f"paired patient bootstrap of the difference ({cmp['num_resamples']} resamples, seed {cmp['seed']}).",
    ]
    if cmp.get("external"):  # cxrdist.eval.external.masked_paired_comparison
        lines.append(f"- External set {cmp['external']} ({cmp.get('shards', '?')}): each class on the images that "
                     f"annotate it only (label_mask); {cmp.get('patients', '')}. n/a: not annotated in this set "
                     f"({', '.join(cmp.get('not_annotated', [])) or 'none'}).")  # fmt: skip
    lines += [f"- {name}: {r['note']}" for name, r in cmp["per_class"].items() if r["note"]]
    lines += [f"- {w}" for w in cmp["warnings"]]
    if cmp.get("localization"):
        head = f"| figure | binarisation | {name_a} | {name_b} | Δ (A − B) | {pct} CI | p |"
        lines += [
            "",
            "Localization (bbox, fixed thresholds; paired patient bootstrap of A − B):",
            "",
            head,
            "|---" * 7 + "|",
        ]
        for variant, figs in cmp["localization"].items():
            lines += [f"| {fig} | heatmap > {variant} | {_f(r['a'])} | {_f(r['b'])} | {_f(r['delta'])} | "
                      f"{_fci(r['ci'])} | {_fp(r['p'])} |" for fig, r in figs.items()]  # fmt: skip
    return "\n".join(lines)
