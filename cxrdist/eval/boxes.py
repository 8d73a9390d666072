"""Heatmap → boxes, and box overlap measures (IoU, IoBB), as pure numpy.

Conventions used by everything in ``cxrdist.eval``:

- Sizes are ``(width, height)`` tuples (the order of the NIH ``OriginalImage[Width Height]`` columns and of
  ``(x, y, w, h)`` boxes); an ``int`` means a square. Arrays keep numpy's ``(height, width)`` shape.
- Boxes are ``(x0, y0, x1, y1)`` in continuous pixel-edge coordinates: pixel ``(row r, col c)`` covers
  ``[c, c + 1) × [r, r + 1)``. A box around pixels with columns ``c0..c1-1`` is therefore
  ``x0 = c0`` (inclusive index) and ``x1 = c1`` (exclusive index), and its area is ``(x1 - x0) * (y1 - y0)``.
- Ground-truth ``(x, y, w, h)`` boxes in original pixels are scaled into the comparison frame without rounding,
  so a sub-pixel ground-truth box keeps its exact area.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

# Wang et al. 2017 (ChestX-ray8) binarise the [0, 255] heatmap at these two values, each evaluated separately.
WANG_THRESHOLDS: tuple[int, int] = (60, 180)
UPSAMPLING = "bilinear, half-pixel centres (align_corners=False, as cv2.resize INTER_LINEAR), no antialiasing"


def as_wh(size: int | tuple[int, int]) -> tuple[int, int]:
    """Return ``size`` as a ``(width, height)`` tuple of positive ints (an int means a square)."""
    pair = (size, size) if np.isscalar(size) else tuple(size)
    if len(pair) != 2:
        raise ValueError(f"size must be an int or (width, height), got {size!r}")
    width, height = pair
    if int(width) != width or int(height) != height or width <= 0 or height <= 0:
        raise ValueError(f"size must be a positive int or (width, height) of positive ints, got {size!r}")
    return int(width), int(height)


def _linear_taps(num_in: int, num_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear interpolation with half-pixel centres."""
    src = (np.arange(num_out, dtype=np.float64) + 0.5) * (num_in / num_out) - 0.5
    src = np.clip(src, 0.0, num_in - 1)
    lo = np.floor(src).astype(np.intp)
    hi = np.minimum(lo + 1, num_in - 1)
    return lo, hi, src - lo


def _resize(heatmap: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """:func:`upsample_bilinear` that may return its (float64) input itself when no resizing is needed."""
    hm = np.asarray(heatmap, dtype=np.float64)
    if hm.ndim != 2 or hm.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {hm.shape}")
    width, height = as_wh(size)
    if hm.shape == (height, width):
        return hm
    r_lo, r_hi, r_w = _linear_taps(hm.shape[0], height)
    c_lo, c_hi, c_w = _linear_taps(hm.shape[1], width)
    rows = hm[r_lo] * (1.0 - r_w)[:, None] + hm[r_hi] * r_w[:, None]
    return rows[:, c_lo] * (1.0 - c_w) + rows[:, c_hi] * c_w


def upsample_bilinear(heatmap: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a ``(h, w)`` map to ``size`` = ``(width, height)`` by separable bilinear interpolation.

    Half-pixel centres, border values replicated: the same numbers as ``cv2.resize(..., INTER_LINEAR)`` and
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (no antialiasing, so also valid
    for shrinking, where it subsamples). Returns a new float64 array of shape ``(height, width)``.
    """
    out = _resize(heatmap, size)
    return out.copy() if np.shares_memory(out, np.asarray(heatmap)) else out


def heatmap_to_image(heatmap: np.ndarray, size: int | tuple[int, int] = 224) -> np.ndarray:
    """Upsample a heatmap to the comparison size and min-max normalise it to ``[0, 255]``.

    The comparison size is where heatmaps and (scaled) ground-truth boxes meet; 224 is the input size of most
    methods here, 1024 the NIH original (slower, and the boxes then need no scaling). The heatmap must cover the
    whole original image: a caller that cropped or warped the input undoes that first.

    Args:
        heatmap: ``(h, w)`` float map of any size (e.g. a 7×7 CAM or a 224×224 map); must be finite.
        size: comparison size, ``int`` or ``(width, height)``.

    Returns:
        float64 ``(height, width)`` array in ``[0, 255]``, not rounded (Wang et al.'s thresholds are then compared
        with exact values). A constant heatmap carries no location, so it maps to all zeros and yields no box
        at any threshold ≥ 0.
    """
    img = _resize(heatmap, size)
    lo, hi = float(img.min()), float(img.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):  # min/max propagate NaN and inf: no separate pass needed
        raise ValueError("heatmap contains NaN or inf")
    if hi <= lo:
        return np.zeros(img.shape, dtype=np.float64)
    return (img - lo) * (255.0 / (hi - lo))


def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 8:
        return np.ones((3, 3), dtype=bool)
    if connectivity == 4:
        return ndimage.generate_binary_structure(2, 1)
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")


def boxes_from_heatmap(img255: np.ndarray, threshold: float, connectivity: int = 8) -> np.ndarray:
    """Binarise at ``> threshold`` and put a box around each connected component.

    Args:
        img255: ``(H, W)`` heatmap already in ``[0, 255]`` (see :func:`heatmap_to_image`).
        threshold: strict binarisation threshold; Wang et al. 2017 use 60 and 180.
        connectivity: 8 (default: diagonal neighbours join a component) or 4.

    Returns:
        int64 ``(K, 4)`` boxes ``(x0, y0, x1, y1)``, ``x0``/``y0`` inclusive and ``x1``/``y1`` exclusive pixel
        indices (= pixel-edge coordinates), in scipy's label order (row-major by first pixel). ``K`` may be 0.
    """
    img = np.asarray(img255)
    if img.ndim != 2:
        raise ValueError(f"img255 must be 2-D, got shape {img.shape}")
    structure = _structure(connectivity)  # validated even when nothing passes the threshold
    mask = img > threshold
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros((0, 4), dtype=np.int64)
    cols = np.flatnonzero(mask.any(axis=0))
    # Label only the mask's bounding window: components cannot leave it, and labelling dominates the cost.
    r0, c0 = int(rows[0]), int(cols[0])
    labelled, _ = ndimage.label(mask[r0 : rows[-1] + 1, c0 : cols[-1] + 1], structure=structure)
    slices = ndimage.find_objects(labelled)
    boxes = np.array([(sx.start, sy.start, sx.stop, sy.stop) for sy, sx in slices], dtype=np.int64)
    return boxes + np.array([c0, r0, c0, r0], dtype=np.int64)


def _as_boxes(boxes: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) or (4,), got {np.shape(boxes)}")
    return arr


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(width, 0.0, None) * np.clip(height, 0.0, None)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)


def overlaps(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise ``(iou(gt, pred), iobb(gt, pred))``, sharing one intersection computation."""
    gt, pred = _as_boxes(gt, "gt"), _as_boxes(pred, "pred")
    inter = _intersection(gt, pred)
    pred_area = np.broadcast_to(_area(pred)[None, :], inter.shape)
    union = _area(gt)[:, None] + pred_area - inter
    zeros = np.zeros_like(inter)
    ratio_union = np.divide(inter, union, out=zeros, where=union > 0)
    return ratio_union, np.divide(inter, pred_area, out=np.zeros_like(inter), where=pred_area > 0)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of ``(x0, y0, x1, y1)`` boxes.

    Args:
        a: ``(N, 4)`` or ``(4,)`` boxes.
        b: ``(M, 4)`` or ``(4,)`` boxes.

    Returns:
        float64 ``(N, M)``; 0 where the union is empty.
    """
    a, b = _as_boxes(a, "a"), _as_boxes(b, "b")
    inter = _intersection(a, b)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def iobb(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pairwise intersection over the *predicted* box's area (IoBB, Wang et al. 2017; docs/methods.md).

    A small predicted box inside a large ground truth scores 1; a large predicted box around a small ground
    truth scores low, like its IoU.

    Args:
        gt: ``(N, 4)`` or ``(4,)`` ground-truth boxes.
        pred: ``(M, 4)`` or ``(4,)`` predicted boxes.

    Returns:
        float64 ``(N, M)``; 0 for a predicted box of zero area.
    """
    gt, pred = _as_boxes(gt, "gt"), _as_boxes(pred, "pred")
    inter = _intersection(gt, pred)
    area = np.broadcast_to(_area(pred)[None, :], inter.shape)
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


def scale_xywh(xywh: np.ndarray, orig_size: int | tuple[int, int], compare_size: int | tuple[int, int]) -> np.ndarray:
    """Scale ``(x, y, w, h)`` boxes from original pixels to ``(x0, y0, x1, y1)`` in the comparison frame.

    Args:
        xywh: ``(N, 4)`` or ``(4,)`` boxes in original-image pixels (the NIH box list's columns).
        orig_size: original image size, ``int`` or ``(width, height)`` (1024 for the NIH originals).
        compare_size: comparison size, ``int`` or ``(width, height)``.

    Returns:
        float64 ``(N, 4)``, not rounded.
    """
    boxes = _as_boxes(xywh, "xywh")
    (ow, oh), (cw, ch) = as_wh(orig_size), as_wh(compare_size)
    sx, sy = cw / ow, ch / oh
    x, y, w, h = boxes.T
    return np.stack([x * sx, y * sy, (x + w) * sx, (y + h) * sy], axis=1)
