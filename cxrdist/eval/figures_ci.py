"""Figures with intervals: a forest plot of runs' mean AUROC with CIs (published values as markers), and per-class
ROC panels with patient-bootstrap bands. matplotlib's object API on the Agg canvas, as :mod:`cxrdist.eval.figures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from sklearn.metrics import roc_auc_score

from cxrdist.eval.bootstrap import cluster_index, resample_counts
from cxrdist.eval.figures import _new_figure, _save
from cxrdist.labels import LABELS


def plot_forest(rows: Sequence[dict[str, Any]], out_png: str | Path, title: str = "Mean AUROC (95% CI)") -> Path:
    """One line per run: ``{label, group, estimate, ci: [lo, hi], published}``; a group shares a colour, its
    published value is a hollow diamond on the run's line. Missing intervals draw the point alone."""
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    groups = list(dict.fromkeys(r["group"] for r in rows))
    fig = _new_figure((7.5, 1.0 + 0.35 * len(rows)))
    ax = fig.add_subplot()
    for i, r in enumerate(rows):
        y, colour = len(rows) - 1 - i, f"C{groups.index(r['group']) % 10}"
        lo, hi = r.get("ci") or (None, None)
        if lo is not None and hi is not None:
            ax.plot([lo, hi], [y, y], color=colour, lw=2)
        if r.get("estimate") is not None:
            ax.plot(
                r["estimate"],
                y,
                "o",
                color=colour,
                label=r["group"] if r["group"] not in ax.get_legend_handles_labels()[1] else None,
            )  # noqa: E501
        if r.get("published") is not None:
            ax.plot(r["published"], y, "D", mfc="none", mec="black", ms=7,
                    label="published" if "published" not in ax.get_legend_handles_labels()[1] else None)  # fmt: skip
    ax.set_yticks(range(len(rows)), [r["label"] for r in reversed(rows)], fontsize=8)
    ax.set(xlabel="mean AUROC over classes", title=title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, out_png)


def roc_band(
    labels: np.ndarray, scores: np.ndarray, patient_ids: np.ndarray, num_resamples: int = 200, seed: int = 0,
    fpr_grid: np.ndarray | None = None, confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """One class's ROC on ``fpr_grid`` with a pointwise percentile band over patient-bootstrap resamples:
    (fpr, tpr, tpr_low, tpr_high). Each resample weights the images by their patient's draw count; images are
    sorted once (ties kept together as in roc_curve: the curve steps at distinct scores only)."""
    grid = np.linspace(0, 1, 101) if fpr_grid is None else fpr_grid
    cluster, num = cluster_index(patient_ids, len(labels))
    counts = np.concatenate([np.ones((1, num)), resample_counts(num, num_resamples, seed)]).astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    s, y, c = scores[order], labels[order].astype(bool), cluster[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last image of each run of tied scores
    w = counts[:, c]  # (B+1, N) weight of each image in each resample
    tp, fp = np.cumsum(w * y, axis=1)[:, last], np.cumsum(w * ~y, axis=1)[:, last]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, fpr = tp / tp[:, -1:], fp / fp[:, -1:]
    curves = np.full((len(counts), len(grid)), np.nan)
    for b in range(len(counts)):
        if np.isfinite(tpr[b, -1]) and np.isfinite(fpr[b, -1]):
            curves[b] = np.interp(grid, np.r_[0.0, fpr[b]], np.r_[0.0, tpr[b]])
    alpha = (1 - confidence) / 2
    rest = curves[1:][np.isfinite(curves[1:, 0])]
    lo, hi = np.quantile(rest, [alpha, 1 - alpha], axis=0) if len(rest) else (curves[0], curves[0])
    return grid, curves[0], lo, hi


def plot_roc_bands(
    labels: np.ndarray, scores: np.ndarray, patient_ids: np.ndarray, out_png: str | Path, title: str = "",
    num_resamples: int = 200, seed: int = 0, class_names: Sequence[str] = LABELS,
) -> Path:  # fmt: skip
    """A panel per class: ROC with its patient-bootstrap 95% band, the AUROC and the positive count."""
    cols = 5
    palette = matplotlib.colormaps["tab20"]  # 14 classes, 14 distinct colours
    rows = -(-len(class_names) // cols)
    fig = _new_figure((2.4 * cols, 2.3 * rows + 0.4))
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    for c, name in enumerate(class_names):
        ax, y = axes[c], labels[:, c]
        pos = int(y.sum())
        if 0 < pos < len(y):
            fpr, tpr, lo, hi = roc_band(y, scores[:, c], patient_ids, num_resamples, seed)
            ax.fill_between(fpr, lo, hi, color=palette(c % 20), alpha=0.3, lw=0)
            ax.plot(fpr, tpr, color=palette(c % 20), lw=1.5)
            ax.set_title(f"{name}: {roc_auc_score(y, scores[:, c]):.3f} (n+={pos})", fontsize=7)
        else:
            ax.set_title(f"{name}: undefined (n+={pos})", fontsize=7)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
    for ax in axes[len(class_names) :]:
        ax.set_axis_off()
    axes[0].set(xlim=(0, 1), ylim=(0, 1), xticks=[0, 0.5, 1], yticks=[0, 0.5, 1])
    fig.suptitle(title or "ROC per class with 95% patient-bootstrap bands", fontsize=9)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.06, top=0.9, wspace=0.08, hspace=0.3)
    path = Path(out_png)
    fig.savefig(path, dpi=80)  # no tight bbox: it draws the 14 panels twice (seconds per figure)
    return path
