"""Weakly supervised localization on the NIH box split: Wang et al. 2017, kim2021 Table 1, fang2021 Table 3.

All three protocols share one pass over the data: each ``(image, class)`` heatmap is upsampled and normalised
once, binarised once per threshold, and its boxes are matched against every ground-truth box of that class on
that image. The protocols then only differ in how the per-box and per-predicted-box best overlaps are
aggregated, so every IoU/IoBB threshold costs a comparison, not a new pass.

Predicted boxes come from the heatmap alone; nothing about them is ever sized from the ground truth.
The choices the papers leave open are recorded in the result's ``protocol`` section (see :data:`PROTOCOL_TEXT`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrdist.eval.boxes import (
    UPSAMPLING,
    WANG_THRESHOLDS,
    as_wh,
    boxes_from_heatmap,
    heatmap_to_image,
    iobb,
    iou,
    overlaps,
    scale_xywh,
)
from cxrdist.labels import BOX_CLASSES, LABELS

__all__ = [
    "ORACLE",
    "KIM_IOU_T",
    "WANG_IOBB_T",
    "WANG_IOU_T",
    "WANG_THRESHOLDS",
    "boxes_from_heatmap",
    "evaluate_localization",
    "heatmap_to_image",
    "iobb",
    "iou",
    "overlaps",
    "scale_xywh",
]

logger = logging.getLogger(__name__)

# Wang et al. 2017 grids (docs/methods.md#evaluation-protocol); literals, not arange, so 0.3 is exactly 0.3.
WANG_IOU_T: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
WANG_IOBB_T: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
# kim2021 Table 1: "setting thresholds of [0.3, 0.5, 0.7]".
KIM_IOU_T: tuple[float, ...] = (0.3, 0.5, 0.7)
# Key of the variant that takes, per ground-truth box, the best box over all binarisation thresholds together: an
# oracle (it picks the threshold from the ground truth, which no paper could), an upper bound kept only as a labelled
# row; published numbers are compared with the fixed-threshold variants, never with it.
ORACLE = "oracle"

# Result keys, named by what they measure; COMPARED_WITH says which paper's numbers each is set beside.
ACC_AFP, ACC_AT_IOU, BEST_BOX_IOU = "acc_afp_at_overlap", "acc_at_iou", "best_box_iou"
COMPARED_WITH: dict[str, str] = {
    ACC_AFP: "Wang et al. 2017 (ChestX-ray8) Table 3: accuracy and average false positives at T(IoU) and T(IoBB)",
    ACC_AT_IOU: "kim2021 Table 1: localization accuracy at T(IoU) 0.3 / 0.5 / 0.7",
    BEST_BOX_IOU: "fang2021 §4.3 / Table 3: IoU of the best predicted box per GT box (CAM IoU, mean over boxes)",
}

PROTOCOL_TEXT: dict[str, str] = {
    "upsampling": UPSAMPLING,
    "normalisation": "min-max to [0, 255] after upsampling, kept as float (no rounding); a constant heatmap "
    "becomes all zeros and yields no box",
    "binarisation": "pixel > threshold (strict); each threshold is evaluated separately",
    "box_convention": "(x0, y0, x1, y1) pixel-edge coordinates: x0/y0 inclusive, x1/y1 exclusive pixel indices; "
    "pixel (r, c) covers [c, c+1) x [r, r+1); one box per connected component",
    "gt_scaling": "(x, y, w, h) in original pixels -> (x*sx, y*sy, (x+w)*sx, (y+h)*sy) with sx = compare_w / "
    "orig_w, sy = compare_h / orig_h; not rounded",
    "heatmap_frame": "each heatmap covers the whole original image (crops/warps undone by the caller)",
    "localized": "a GT box is localized at T when some predicted box of its class on its image has IoU > T "
    "(IoBB > T on the IoBB grid); IoBB = intersection / predicted box area",
    "false_positive": "a predicted box (class c heatmap of image i, one binarisation threshold) is a false positive "
    "at T when it localizes no GT box of class c on image i (IoU > T, or IoBB > T on the IoBB grid); average FP of "
    "class c = number of such boxes / number of images with at least one GT box of class c (heatmaps of images "
    "without a GT box of c are not evaluated)",
    "acc_at_iou_threshold": "not stated by kim2021 ('the predefined threshold presented in [18, 37]', no "
    "value, singular); reported per Wang threshold (the literal reading: one threshold per table; the published "
    "numbers are set beside these) and as 'oracle' (per GT box, best box over both thresholds: an upper bound no "
    "paper could have, never compared with a published number). None is known to match kim's numbers",
    "best_box_iou_rule": "per GT box, IoU of the best predicted box (max IoU over all boxes of the class's heatmap "
    "at the threshold), 0 when there is none; fang2021 states no box rule, threshold or normalisation (a choice)",
    "oracle_variant": "'oracle' = per GT box, the best overlap over the boxes of all thresholds together (it "
    "chooses the threshold with the ground truth: an upper bound, not a measurement a paper could make)",
    "means": "mean_over_classes = unweighted over classes with >= 1 GT box (kim2021's Mean); mean_over_boxes = "
    "over all GT boxes (fang2021's 0.3014); AFP: mean_over_classes and pooled (all FP / all (image, class) pairs)",
    "predicted_boxes": "from the heatmap alone; never sized from the ground truth",
}


def _tkey(value: float) -> str:
    return f"{value:g}"


def _parse_records(
    boxes: Sequence[Mapping[str, Any]], orig_size: Mapping[Any, Any] | int | tuple[int, int], compare_wh: tuple
) -> tuple[list, np.ndarray, np.ndarray]:
    """Validate box records; return keys, class indices and GT boxes in the comparison frame."""
    if len(boxes) == 0:
        raise ValueError("no ground-truth boxes given")
    keys, classes, xywh = [], np.empty(len(boxes), np.int64), np.empty((len(boxes), 4), np.float64)
    for i, rec in enumerate(boxes):
        missing = {"key", "class_idx", "x", "y", "w", "h"} - set(rec)
        if missing:
            raise ValueError(f"box record {i} lacks {sorted(missing)}: {rec!r}")
        keys.append(rec["key"])
        classes[i] = int(rec["class_idx"])
        xywh[i] = (rec["x"], rec["y"], rec["w"], rec["h"])
    bad = np.flatnonzero((classes < 0) | (classes >= len(LABELS)))
    if bad.size:
        raise ValueError(f"box records {bad[:5].tolist()} have class_idx outside 0..{len(LABELS) - 1}")
    bad = np.flatnonzero(~np.all(np.isfinite(xywh), axis=1) | (xywh[:, 2] <= 0) | (xywh[:, 3] <= 0))
    if bad.size:
        raise ValueError(f"box records {bad[:5].tolist()} have non-finite or non-positive w/h")
    wh = np.array([_orig_wh(orig_size, k) for k in keys], dtype=np.float64)
    sx, sy = compare_wh[0] / wh[:, 0], compare_wh[1] / wh[:, 1]
    x, y, w, h = xywh.T
    gt = np.stack([x * sx, y * sy, (x + w) * sx, (y + h) * sy], axis=1)  # same rule as boxes.scale_xywh
    return keys, classes, gt


def _orig_wh(orig_size: Mapping[Any, Any] | int | tuple[int, int], key: Any) -> tuple[int, int]:
    if not isinstance(orig_size, Mapping):
        return as_wh(orig_size)
    if key not in orig_size:
        raise ValueError(f"orig_size has no entry for image {key!r}")
    return as_wh(orig_size[key])


def _heatmap_for(heatmaps: Mapping, key: Any, class_idx: int) -> np.ndarray | None:
    """Heatmap of ``(key, class_idx)``: keyed by the pair, or a per-image ``(C, h, w)`` stack keyed by image."""
    if (key, class_idx) in heatmaps:
        return np.asarray(heatmaps[(key, class_idx)])
    if key in heatmaps:
        stack = np.asarray(heatmaps[key])
        if stack.ndim == 3 and class_idx < stack.shape[0]:
            return stack[class_idx]
    return None


def _match(
    heatmaps: Mapping, groups: dict, gt: np.ndarray, compare_wh: tuple, thresholds: Sequence[float], connectivity: int
) -> dict[str, dict[str, np.ndarray]]:
    """Best overlaps per GT box and per predicted box, for each binarisation threshold."""
    num = len(gt)
    out = {_tkey(t): {"box_iou": np.zeros(num), "box_iobb": np.zeros(num)} for t in thresholds}
    preds: dict[str, list[tuple]] = {_tkey(t): [] for t in thresholds}
    for pair, ((key, c), idx) in enumerate(groups.items()):
        try:
            img = heatmap_to_image(_heatmap_for(heatmaps, key, c), compare_wh)
        except ValueError as err:
            raise ValueError(f"heatmap of image {key!r}, class {c}: {err}") from err
        for t in thresholds:
            pred = boxes_from_heatmap(img, t, connectivity)
            if len(pred) == 0:
                continue  # nothing predicted: the GT boxes keep overlap 0, and there is no false positive
            ov, ob = overlaps(gt[idx], pred)
            out[_tkey(t)]["box_iou"][idx] = ov.max(axis=1)
            out[_tkey(t)]["box_iobb"][idx] = ob.max(axis=1)
            preds[_tkey(t)].append((np.full(len(pred), pair), ov.max(axis=0), ob.max(axis=0)))
    for tk, rows in preds.items():
        cols = (
            [np.concatenate(col) for col in zip(*rows)] if rows else [np.zeros(0, np.int64), np.zeros(0), np.zeros(0)]
        )
        out[tk].update(pred_pair=cols[0].astype(np.int64), pred_iou=cols[1], pred_iobb=cols[2])
    return out


def _fp_per_pair(m: dict, num_pairs: int, grids: dict) -> dict[str, dict[str, np.ndarray]]:
    """False positives of each ``(image, class)`` pair (in ``groups`` order) at every T of both grids.

    Kept per pair, not only per class, so a patient-clustered bootstrap can resample them (compare.py)."""
    return {
        name: {
            _tkey(t): np.bincount(m["pred_pair"], weights=(m[f"pred_{name}"] <= t).astype(np.float64),
                                  minlength=num_pairs)
            for t in grid
        }
        for name, grid in grids.items()
    }  # fmt: skip


def _per_class(values: np.ndarray, classes: Sequence[int]) -> dict[str, float | None]:
    return {LABELS[c]: (None if np.isnan(values[c]) else float(values[c])) for c in classes}


def _class_mean(values: np.ndarray, classes: Sequence[int]) -> float | None:
    vals = values[list(classes)]
    vals = vals[~np.isnan(vals)]
    return float(vals.mean()) if vals.size else None


def _summarise(values_per_box: np.ndarray, box_cls: np.ndarray, classes: Sequence[int]) -> dict[str, Any]:
    """Per-class mean of a per-box quantity, its unweighted mean over classes and its mean over boxes."""
    counts = np.bincount(box_cls, minlength=len(LABELS)).astype(np.float64)
    sums = np.bincount(box_cls, weights=values_per_box.astype(np.float64), minlength=len(LABELS))
    with np.errstate(invalid="ignore", divide="ignore"):
        per = sums / counts  # NaN for classes without boxes
    in_classes = np.isin(box_cls, list(classes))
    over_boxes = float(values_per_box[in_classes].mean()) if in_classes.any() else None
    return {
        "per_class": _per_class(per, classes),
        "mean_over_classes": _class_mean(per, classes),
        "mean_over_boxes": over_boxes,
    }


def _wang(m: dict, box_cls: np.ndarray, pair_cls: np.ndarray, classes: Sequence[int], fp_pairs: dict) -> dict:
    """Accuracy and average false positives per class on the IoU and IoBB grids, for one threshold.

    ``fp_pairs``: :func:`_fp_per_pair` of this threshold; ``pair_cls``: the class of each pair."""
    result: dict[str, dict] = {}
    pairs_per_class = np.bincount(pair_cls, minlength=len(LABELS)).astype(np.float64)
    for name, by_t in fp_pairs.items():
        box_best = m[f"box_{name}"]
        result[name] = {}
        for tk, fp_pair in by_t.items():
            t = float(tk)
            acc = _summarise(box_best > t, box_cls, classes)
            fp = np.bincount(pair_cls, weights=fp_pair, minlength=len(LABELS))
            with np.errstate(invalid="ignore", divide="ignore"):
                afp = fp / pairs_per_class
            in_classes = list(classes)
            pooled = fp[in_classes].sum() / pairs_per_class[in_classes].sum()
            result[name][tk] = {
                "accuracy": acc["per_class"],
                "accuracy_mean_over_classes": acc["mean_over_classes"],
                "accuracy_mean_over_boxes": acc["mean_over_boxes"],
                "afp": _per_class(afp, classes),
                "afp_mean_over_classes": _class_mean(afp, classes),
                "afp_pooled": float(pooled) if pairs_per_class[in_classes].sum() else None,
            }
    return result


def _acc_and_best_iou(best_iou: dict[str, np.ndarray], box_cls: np.ndarray, classes: Sequence[int], iou_t) -> tuple:
    """Accuracy at T(IoU) (kim2021) and best-box IoU (fang2021), per threshold variant (and the ``oracle``)."""
    acc = {v: {_tkey(t): _summarise(b > t, box_cls, classes) for t in iou_t} for v, b in best_iou.items()}
    best = {v: _summarise(b, box_cls, classes) for v, b in best_iou.items()}
    return acc, best


def _group_pairs(keys: list, box_cls: np.ndarray, heatmaps: Mapping) -> dict[tuple[Any, int], np.ndarray]:
    """Indices of the GT boxes of each ``(image, class)``; raises if any pair has no heatmap."""
    groups: dict[tuple[Any, int], list[int]] = {}
    for i, (key, c) in enumerate(zip(keys, box_cls.tolist())):
        groups.setdefault((key, c), []).append(i)
    missing = [pair for pair in groups if _heatmap_for(heatmaps, *pair) is None]
    if missing:
        raise ValueError(f"{len(missing)} (image, class) pairs with GT boxes have no heatmap, e.g. {missing[:5]}")
    return {pair: np.array(idx, dtype=np.intp) for pair, idx in groups.items()}


def _protocol(compare_wh: tuple[int, int], thresholds: Sequence[float], connectivity: int) -> dict[str, Any]:
    return {
        "compare_size": compare_wh,
        "thresholds": [float(t) for t in thresholds],
        "connectivity": connectivity,
        "acc_afp_iou_T": list(WANG_IOU_T),
        "acc_afp_iobb_T": list(WANG_IOBB_T),
        "acc_at_iou_T": list(KIM_IOU_T),
        **PROTOCOL_TEXT,
    }


def evaluate_localization(
    heatmaps: Mapping,
    boxes: Sequence[Mapping[str, Any]],
    orig_size: Mapping[Any, Any] | int | tuple[int, int] = 1024,
    compare_size: int | tuple[int, int] = 224,
    thresholds: Sequence[float] = WANG_THRESHOLDS,
    connectivity: int = 8,
) -> dict[str, Any]:
    """Run the Wang et al. 2017, kim2021 Table 1 and fang2021 Table 3 protocols in one pass.

    Args:
        heatmaps: ``{(image key, class idx): (h, w) map}`` or ``{image key: (C, h, w) stack}``; only the pairs
            that have ground-truth boxes are read. Each map covers the whole original image.
        boxes: records ``{key, class_idx, x, y, w, h}``, boxes in original-image pixels, class_idx into LABELS.
        orig_size: original size per image key (``{key: (width, height)}``) or one size for all (NIH: 1024).
        compare_size: size heatmaps and boxes are compared at, ``int`` or ``(width, height)``.
        thresholds: binarisation thresholds on the [0, 255] heatmap, each evaluated separately.
        connectivity: 8 or 4 for the connected components.

    Returns:
        ``protocol`` (every choice), counts, ``acc_afp_at_overlap[thr][iou|iobb][T]`` (accuracy and average FP
        per class, both means; Wang et al. 2017), ``acc_at_iou[thr|oracle][T]`` (kim2021) and
        ``best_box_iou[thr|oracle]`` (fang2021) (``per_class``, ``mean_over_classes``, ``mean_over_boxes``),
        ``compared_with`` (the paper table each is set beside), ``per_box`` best IoUs, ``per_pair`` (each
        ``(image, class)`` pair with a GT box and its FP count per threshold, grid and T: what AFP averages; the
        bootstrap of compare.py resamples them), and ``warnings``.
    """
    compare_wh = as_wh(compare_size)
    if len(thresholds) == 0:
        raise ValueError("thresholds is empty: give at least one binarisation threshold, e.g. (60, 180)")
    keys, box_cls, gt = _parse_records(boxes, orig_size, compare_wh)
    groups = _group_pairs(keys, box_cls, heatmaps)
    matches = _match(heatmaps, groups, gt, compare_wh, list(thresholds), connectivity)
    classes = sorted(set(range(len(BOX_CLASSES))) | set(box_cls.tolist()))
    box_counts = np.bincount(box_cls, minlength=len(LABELS))
    pairs_per_class = np.bincount([c for _, c in groups], minlength=len(LABELS)).astype(np.float64)
    grids = {"iou": WANG_IOU_T, "iobb": WANG_IOBB_T}
    pair_cls = np.array([c for _, c in groups], dtype=np.int64)
    fp_pairs = {tk: _fp_per_pair(m, len(groups), grids) for tk, m in matches.items()}
    wang = {tk: _wang(m, box_cls, pair_cls, classes, fp_pairs[tk]) for tk, m in matches.items()}
    best_iou = {tk: m["box_iou"] for tk, m in matches.items()}
    best_iou[ORACLE] = np.max(np.stack(list(best_iou.values())), axis=0)
    acc_at_iou, best_box_iou = _acc_and_best_iou(best_iou, box_cls, classes, KIM_IOU_T)
    per_box = {"key": keys, "class_idx": box_cls.tolist(), "best_iou": {k: b.tolist() for k, b in best_iou.items()}}
    return {
        "protocol": _protocol(compare_wh, thresholds, connectivity),
        "classes": [LABELS[c] for c in classes],
        "num_boxes": len(keys),
        "num_images": len(set(keys)),
        "num_pairs": len(groups),
        "boxes_per_class": {LABELS[c]: int(box_counts[c]) for c in classes},
        "images_per_class": {LABELS[c]: int(pairs_per_class[c]) for c in classes},
        ACC_AFP: wang,
        ACC_AT_IOU: acc_at_iou,
        BEST_BOX_IOU: best_box_iou,
        "compared_with": dict(COMPARED_WITH),
        "per_box": per_box,
        "per_pair": _per_pair(groups, pair_cls, fp_pairs),
        "warnings": _no_box_warnings(classes, box_counts),
    }


def _no_box_warnings(classes: Sequence[int], box_counts: np.ndarray) -> list[str]:
    """One warning (logged and returned) per class without ground-truth boxes."""
    warnings = [
        f"{LABELS[c]}: no ground-truth boxes; reported as n/a and left out of the means over classes"
        for c in classes
        if box_counts[c] == 0
    ]
    for w in warnings:
        logger.warning(w)
    return warnings


def _per_pair(groups: Sequence[tuple[str, int]], pair_cls: np.ndarray, fp_pairs: Mapping) -> dict[str, Any]:
    """The (image, class) pairs with a GT box, and their FP counts per threshold, grid and T (AFP's numerators)."""
    return {
        "key": [k for k, _ in groups],
        "class_idx": pair_cls.tolist(),
        "fp": {
            tk: {g: {t: v.astype(np.int64).tolist() for t, v in by_t.items()} for g, by_t in fp.items()}
            for tk, fp in fp_pairs.items()
        },
    }
