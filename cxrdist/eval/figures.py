"""Evaluation figures: ROC curves, heatmap overlays with boxes, published-vs-ours bar charts.

Uses matplotlib's object API with the Agg canvas (``Figure`` + ``FigureCanvasAgg``), never pyplot, so it works
headless on any rank or worker, leaves the global backend alone, and keeps no figure alive after saving.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn.metrics import roc_auc_score, roc_curve

from cxrdist.eval.boxes import heatmap_to_image
from cxrdist.labels import LABELS

logger = logging.getLogger(__name__)


def _new_figure(figsize: tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_png: str | Path, dpi: int = 120) -> Path:
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")  # keeps rotated tick labels and legends
    logger.info("wrote %s", path)
    return path


def plot_roc(labels: np.ndarray, scores: np.ndarray, out_png: str | Path, class_names: Sequence[str] = LABELS) -> Path:
    """Draw the per-class ROC curves in one panel, AUROC in the legend, and save as PNG.

    Args:
        labels: ``(N, C)`` 0/1 ground truth.
        scores: ``(N, C)`` scores.
        out_png: output path (parent folders are created).
        class_names: names of the ``C`` columns.

    Returns:
        The path written. A class with a single label value is listed as "n/a" without a curve.
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    fig = _new_figure((8.0, 8.0))
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(class_names))]
    styles = ["-", "--"]
    for c, name in enumerate(class_names):
        column = labels[:, c]
        if column.min() == column.max():
            ax.plot([], [], color=colors[c], label=f"{name} (n/a)")
            continue
        fpr, tpr, _ = roc_curve(column, scores[:, c])
        auc = roc_auc_score(column, scores[:, c])
        ax.plot(fpr, tpr, color=colors[c], linestyle=styles[c // 10 % 2], lw=1.2, label=f"{name} ({auc:.4f})")
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, linestyle=":")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="False positive rate", ylabel="True positive rate", aspect="equal")
    ax.set_title(f"ROC per class (N = {labels.shape[0]})")
    ax.legend(loc="lower right", fontsize=8, title="class (AUROC)", title_fontsize=8)
    return _save(fig, out_png)


def _draw_boxes(ax, boxes: np.ndarray, color: str, linestyle: str, label: str) -> None:
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        rect = Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linestyle=linestyle, lw=1.5)
        rect.set_label(label if i == 0 else None)
        ax.add_patch(rect)


def plot_heatmap_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    gt_boxes: np.ndarray,
    pred_boxes: np.ndarray,
    out_png: str | Path,
    title: str = "",
    colorbar: str | None = None,
) -> Path:
    """Overlay a heatmap (upsampled, min-max to [0, 255]) on a grey image with GT and predicted boxes.

    Args:
        image: ``(H, W)`` uint8 image.
        heatmap: ``(h, w)`` map of any size; upsampled to ``(H, W)`` as in the localization protocol.
        gt_boxes: ``(N, 4)`` ``(x0, y0, x1, y1)`` in the image's pixel-edge frame (green, solid).
        pred_boxes: ``(M, 4)`` ``(x0, y0, x1, y1)`` in the same frame (red, dashed).
        out_png: output path.
        title: figure title.
        colorbar: label of a colour bar for the heatmap (None: no bar).

    Returns:
        The path written.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {image.shape}")
    height, width = image.shape
    heat = heatmap_to_image(heatmap, (width, height))
    fig = _new_figure((6.0, 6.0 * height / width + 0.4))
    ax = fig.add_subplot()
    # extent puts pixel (r, c) on [c, c+1) x [r, r+1), the frame the boxes are given in.
    extent = (0, width, height, 0)
    ax.imshow(image, cmap="gray", vmin=0, vmax=255, extent=extent, interpolation="nearest")
    shown = ax.imshow(heat, cmap="jet", alpha=0.35, vmin=0, vmax=255, extent=extent, interpolation="nearest")
    if colorbar:
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label=colorbar)
    _draw_boxes(ax, gt_boxes, "lime", "-", "ground truth")
    _draw_boxes(ax, pred_boxes, "red", "--", "predicted")
    ax.set(xlim=(0, width), ylim=(height, 0), xticks=[], yticks=[])
    ax.set_title(title, fontsize=10)
    if len(np.asarray(gt_boxes).reshape(-1, 4)) or len(np.asarray(pred_boxes).reshape(-1, 4)):
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out_png)


Panel = tuple[str, np.ndarray, np.ndarray | None]


def plot_image_grid(rows: Sequence[Sequence[Panel]], out_png: str | Path, title: str = "") -> Path:
    """Save a grid of grey images, each with an optional translucent overlay (masks, maps, before/after views).

    Args:
        rows: rows of panels ``(title, image (H, W) float or uint8, overlay (h, w) in [0, 1] or None)``; an
            image is shown min-max scaled, an overlay is stretched over it, translucent where it is > 0.
        out_png: output path.
        title: figure title.

    Returns:
        The path written.
    """
    nrows, ncols = len(rows), max(len(r) for r in rows)
    fig = _new_figure((2.2 * ncols, 2.2 * nrows + (0.4 if title else 0.0)))
    for r, row in enumerate(rows):
        for c, (name, image, overlay) in enumerate(row):
            ax = fig.add_subplot(nrows, ncols, r * ncols + c + 1)
            image = np.asarray(image, dtype=np.float64)
            height, width = image.shape
            extent = (0, width, height, 0)
            ax.imshow(image, cmap="gray", extent=extent, interpolation="nearest")
            if overlay is not None:  # zeros stay transparent so the image shows through
                shown = np.ma.masked_less_equal(np.asarray(overlay, dtype=np.float64), 0.0)
                ax.imshow(shown, cmap="autumn", alpha=0.45, vmin=0, vmax=1, extent=extent, interpolation="nearest")
            ax.set(xticks=[], yticks=[])
            ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_png)


def _class_order(rows: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    """Union of the class names of all series, LABELS order first, then first-seen order."""
    seen: list[str] = []
    for per_class in rows.values():
        seen.extend(name for name in per_class if name not in seen)
    return [n for n in LABELS if n in seen] + [n for n in seen if n not in LABELS]


def plot_published_vs_ours(
    rows: Mapping[str, Mapping[str, float | None]],
    out_png: str | Path,
    title: str = "Published vs ours",
    ylabel: str = "AUROC",
) -> Path:
    """Grouped bar chart: one group per class, one bar per series (published columns and any number of runs).

    Args:
        rows: ``{series name: {class name: value or None}}``, e.g. ``{"fang2021 Ours": {...}, "run A": {...}}``;
            series are drawn side by side in the mapping's order. A missing or None value draws no bar.
        out_png: output path.
        title: figure title.
        ylabel: y-axis label (AUROC, IoU, accuracy, ...).

    Returns:
        The path written.
    """
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    classes = _class_order(rows)
    num_series = len(rows)
    width = 0.8 / num_series
    x = np.arange(len(classes))
    fig = _new_figure((max(8.0, 0.6 * len(classes) * max(1, num_series / 2)), 4.5))
    ax = fig.add_subplot()
    values = [v for per_class in rows.values() for v in per_class.values() if v is not None]
    lo = min(values) if values else 0.0
    # AUROC-like values cluster near 1: start the axis below the smallest bar so differences stay visible.
    bottom = max(0.0, lo - 0.1) if lo > 0.5 else 0.0
    ax.set_ylim(bottom, max(values + [1e-9]) * 1.05)
    for s, (series, per_class) in enumerate(rows.items()):
        heights = np.array([np.nan if per_class.get(n) is None else per_class[n] for n in classes], dtype=float)
        pos = x - 0.4 + width * (s + 0.5)
        ax.bar(pos, np.nan_to_num(heights, nan=bottom), width, label=series, color=f"C{s % 10}")
        for i in np.flatnonzero(np.isnan(heights)):
            ax.text(pos[i], bottom, "n/a", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, classes, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=8, ncols=min(num_series, 4))
    return _save(fig, out_png)
