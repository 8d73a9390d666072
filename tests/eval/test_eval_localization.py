"""The three localization protocols against hand-computed cases and a brute-force reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cxrdist.eval.boxes import boxes_from_heatmap, heatmap_to_image
from cxrdist.eval.localization import KIM_IOU_T, WANG_IOBB_T, WANG_IOU_T, evaluate_localization

S = 224  # tests below use orig_size = compare_size = 224 so boxes need no scaling, except where stated


def rec(key: str, c: int, x: float, y: float, w: float, h: float) -> dict:
    return {"key": key, "class_idx": c, "x": x, "y": y, "w": w, "h": h}


def blocks(*regions: tuple[int, int, int, int, float]) -> np.ndarray:
    """A 224² heatmap with value v on pixel rectangles (x0, y0, x1, y1, v), exclusive ends."""
    hm = np.zeros((S, S))
    for x0, y0, x1, y1, v in regions:
        hm[y0:y1, x0:x1] = v
    return hm


def evaluate(heatmaps: dict, boxes: list[dict], **kw) -> dict:
    kw.setdefault("orig_size", S)
    return evaluate_localization(heatmaps, boxes, **kw)


def test_scaling_from_1024() -> None:
    # GT at (512, 256, 256, 128) in 1024 px = (112, 56, 168, 84) at 224; heatmap covers (126, 56, 168, 84).
    hm = blocks((126, 56, 168, 84, 1.0))
    res = evaluate({("img", 0): hm}, [rec("img", 0, 512, 256, 256, 128)], orig_size=1024, compare_size=224)
    # IoU = (42 * 28) / (56 * 28) = 0.75; IoBB = 1 (the predicted box lies inside the GT).
    assert res["best_box_iou"]["60"]["per_class"]["Atelectasis"] == pytest.approx(0.75)
    assert res["per_box"]["best_iou"]["180"] == [pytest.approx(0.75)]
    assert res["acc_at_iou"]["60"]["0.7"]["per_class"]["Atelectasis"] == 1.0  # 0.75 > 0.7
    assert res["acc_afp_at_overlap"]["60"]["iobb"]["0.9"]["accuracy"]["Atelectasis"] == 1.0
    assert res["acc_afp_at_overlap"]["60"]["iou"]["0.7"]["afp"]["Atelectasis"] == 0.0
    # The same GT, compared at 1024: the heatmap is upsampled ×4.571, the box stays unscaled.
    hm7 = np.zeros((8, 8))
    hm7[2:3, 4:6] = 1.0  # cells x 4..5, y 2 of an 8×8 map = (512, 256, 768, 384) in 1024 px
    res = evaluate({("img", 0): hm7}, [rec("img", 0, 512, 256, 256, 128)], orig_size=1024, compare_size=1024)
    assert res["best_box_iou"]["180"]["mean_over_boxes"] > 0.3  # bilinear blur of one 128-px cell row at 1024


def test_tiny_gt_box() -> None:
    # 4×4 px at 1024 → (21.875, 21.875)–(22.75, 22.75) at 224, area 0.765625; predicted pixel (22, 22)–(23, 23).
    hm = blocks((22, 22, 23, 23, 1.0))
    res = evaluate({("a", 5): hm}, [rec("a", 5, 100, 100, 4, 4)], orig_size=1024)
    inter = 0.75 * 0.75
    assert res["best_box_iou"]["60"]["per_class"]["Nodule"] == pytest.approx(inter / (0.765625 + 1 - inter))
    assert res["acc_afp_at_overlap"]["60"]["iobb"]["0.5"]["accuracy"]["Nodule"] == 1.0  # IoBB = 0.5625
    assert res["acc_afp_at_overlap"]["60"]["iobb"]["0.75"]["accuracy"]["Nodule"] == 0.0


def test_false_positives_and_accuracy() -> None:
    # Image a: three components, one equal to the GT → localized, 2 FP. Image b: constant map → 0 boxes, 0 FP.
    hm_a = blocks((10, 10, 30, 30, 1.0), (100, 100, 110, 110, 1.0), (150, 10, 160, 20, 1.0))
    hm_b = np.full((7, 7), 3.0)
    boxes = [rec("a", 0, 10, 10, 20, 20), rec("b", 0, 50, 50, 40, 40)]
    res = evaluate({("a", 0): hm_a, ("b", 0): hm_b}, boxes)
    at = res["acc_afp_at_overlap"]["60"]["iou"]["0.5"]
    assert at["accuracy"]["Atelectasis"] == 0.5
    assert at["afp"]["Atelectasis"] == 1.0  # (2 + 0) FP over 2 images with an Atelectasis box
    assert at["afp_pooled"] == 1.0
    assert res["per_box"]["best_iou"]["60"] == [1.0, 0.0]  # constant heatmap: no box, IoU 0
    assert res["images_per_class"]["Atelectasis"] == 2


def test_fp_switches_at_strict_threshold() -> None:
    # GT (0, 0, 20, 20), prediction (10, 0, 30, 20): IoU = 200 / 600 = 1/3, IoBB = 200 / 400 = 0.5.
    res = evaluate({("a", 1): blocks((10, 0, 30, 20, 1.0))}, [rec("a", 1, 0, 0, 20, 20)])
    iou_grid, iobb_grid = res["acc_afp_at_overlap"]["60"]["iou"], res["acc_afp_at_overlap"]["60"]["iobb"]
    assert iou_grid["0.3"]["accuracy"]["Cardiomegaly"] == 1.0 and iou_grid["0.3"]["afp"]["Cardiomegaly"] == 0.0
    assert iou_grid["0.4"]["accuracy"]["Cardiomegaly"] == 0.0 and iou_grid["0.4"]["afp"]["Cardiomegaly"] == 1.0
    assert iobb_grid["0.25"]["accuracy"]["Cardiomegaly"] == 1.0
    assert iobb_grid["0.5"]["accuracy"]["Cardiomegaly"] == 0.0  # 0.5 is not > 0.5
    assert iobb_grid["0.5"]["afp"]["Cardiomegaly"] == 1.0


def test_two_gt_boxes_one_prediction() -> None:
    boxes = [rec("a", 2, 0, 0, 20, 20), rec("a", 2, 100, 100, 20, 20)]
    res = evaluate({("a", 2): blocks((0, 0, 20, 20, 1.0))}, boxes)
    at = res["acc_afp_at_overlap"]["60"]["iou"]["0.5"]
    assert at["accuracy"]["Effusion"] == 0.5
    assert at["afp"]["Effusion"] == 0.0  # the only box localizes one GT box: not a false positive
    assert res["images_per_class"]["Effusion"] == 1 and res["boxes_per_class"]["Effusion"] == 2


def test_thresholds_separately_and_oracle() -> None:
    # A value-100 block on the GT and a value-255 block elsewhere: > 60 sees both, > 180 only the far one.
    hm = blocks((10, 10, 30, 30, 100.0), (100, 100, 120, 120, 255.0))
    res = evaluate({("a", 0): hm}, [rec("a", 0, 10, 10, 20, 20)])
    assert res["per_box"]["best_iou"] == {"60": [1.0], "180": [0.0], "oracle": [1.0]}
    assert res["acc_at_iou"]["60"]["0.5"]["mean_over_classes"] == 1.0
    assert res["acc_at_iou"]["180"]["0.5"]["mean_over_classes"] == 0.0
    assert res["acc_at_iou"]["oracle"]["0.5"]["mean_over_classes"] == 1.0
    assert res["acc_afp_at_overlap"]["180"]["iou"]["0.1"]["afp"]["Atelectasis"] == 1.0
    assert res["acc_afp_at_overlap"]["60"]["iou"]["0.1"]["afp"]["Atelectasis"] == 1.0


def test_fang_and_kim_means_over_classes_vs_boxes() -> None:
    # Atelectasis: IoU 1, 0, 0 (three boxes); Cardiomegaly: IoU 0.5 (one box).
    heatmaps = {
        ("a", 0): blocks((0, 0, 20, 20, 1.0)),
        ("b", 0): np.zeros((7, 7)),
        ("c", 0): blocks((200, 200, 210, 210, 1.0)),
        ("a", 1): blocks((50, 50, 70, 60, 1.0)),
    }
    boxes = [
        rec("a", 0, 0, 0, 20, 20),
        rec("b", 0, 0, 0, 20, 20),
        rec("c", 0, 0, 0, 20, 20),
        rec("a", 1, 50, 50, 20, 20),
    ]
    res = evaluate(heatmaps, boxes)
    fang = res["best_box_iou"]["60"]
    assert fang["per_class"]["Atelectasis"] == pytest.approx(1 / 3)
    assert fang["per_class"]["Cardiomegaly"] == pytest.approx(0.5)
    assert fang["mean_over_boxes"] == pytest.approx(1.5 / 4)
    assert fang["mean_over_classes"] == pytest.approx((1 / 3 + 0.5) / 2)
    assert fang["per_class"]["Effusion"] is None
    kim = res["acc_at_iou"]["60"]["0.3"]
    assert kim["mean_over_classes"] == pytest.approx((1 / 3 + 1) / 2)  # kim2021's "Mean": unweighted
    assert kim["mean_over_boxes"] == pytest.approx(2 / 4)
    assert res["acc_at_iou"]["60"]["0.5"]["per_class"]["Cardiomegaly"] == 0.0  # 0.5 is not > 0.5
    assert len(res["warnings"]) == 6 and all("no ground-truth boxes" in w for w in res["warnings"])
    assert set(res["acc_at_iou"]["oracle"]) == {"0.3", "0.5", "0.7"}


def test_per_image_stack_input_and_errors() -> None:
    stack = np.zeros((14, 7, 7))
    stack[3, 2:4, 2:4] = 1.0
    boxes = [rec("a", 3, 60, 60, 70, 70)]
    by_pair = evaluate({("a", 3): stack[3]}, boxes)
    by_image = evaluate({"a": stack}, boxes)
    assert by_pair["best_box_iou"] == by_image["best_box_iou"]
    assert by_pair["acc_afp_at_overlap"] == by_image["acc_afp_at_overlap"]
    with pytest.raises(ValueError, match="no heatmap"):
        evaluate({("a", 2): stack[3]}, boxes)
    with pytest.raises(ValueError, match="orig_size"):
        evaluate({"a": stack}, boxes, orig_size={"b": 1024})
    with pytest.raises(ValueError, match="w/h"):
        evaluate({"a": stack}, [rec("a", 3, 0, 0, 0, 10)])


def test_protocol_section_records_choices() -> None:
    res = evaluate({("a", 0): blocks((0, 0, 5, 5, 1.0))}, [rec("a", 0, 0, 0, 5, 5)], connectivity=4)
    proto = res["protocol"]
    assert proto["compare_size"] == (224, 224) and proto["connectivity"] == 4 and proto["thresholds"] == [60, 180]
    for key in ("upsampling", "normalisation", "box_convention", "false_positive", "acc_at_iou_threshold"):
        assert proto[key]
    assert proto["acc_afp_iou_T"] == list(WANG_IOU_T) and proto["acc_afp_iobb_T"] == list(WANG_IOBB_T)


def _scalar_iou(a, b, over_pred: bool = False) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    return inter / area_b if over_pred else inter / (area_a + area_b - inter)


def test_matches_brute_force_reference() -> None:
    rng = np.random.default_rng(3)
    boxes, heatmaps = [], {}
    for i in range(12):
        for c in rng.choice(8, size=rng.integers(1, 3), replace=False):
            heatmaps[(f"k{i}", int(c))] = rng.random((7, 7)) ** 4
            for _ in range(rng.integers(1, 3)):
                w, h = rng.uniform(50, 400, 2)
                boxes.append(rec(f"k{i}", int(c), rng.uniform(0, 1024 - w), rng.uniform(0, 1024 - h), w, h))
    res = evaluate_localization(heatmaps, boxes, orig_size=1024, compare_size=224)
    for thr, (measure, grid) in itertools.product((60, 180), (("iou", WANG_IOU_T), ("iobb", WANG_IOBB_T))):
        over_pred = measure == "iobb"
        for t in grid:
            hits, fps, pairs = np.zeros(8), np.zeros(8), np.zeros(8)
            for (key, c), hm in heatmaps.items():
                preds = boxes_from_heatmap(heatmap_to_image(hm, 224), thr).tolist()
                gts = [
                    [b["x"] * 0.21875, b["y"] * 0.21875, (b["x"] + b["w"]) * 0.21875, (b["y"] + b["h"]) * 0.21875]
                    for b in boxes
                    if (b["key"], b["class_idx"]) == (key, c)
                ]
                pairs[c] += 1
                hits[c] += sum(any(_scalar_iou(g, p, over_pred) > t for p in preds) for g in gts)
                fps[c] += sum(not any(_scalar_iou(g, p, over_pred) > t for g in gts) for p in preds)
            counts = np.bincount([b["class_idx"] for b in boxes], minlength=8)
            got = res["acc_afp_at_overlap"][str(thr)][measure][f"{t:g}"]
            for c, name in enumerate(res["classes"]):
                if counts[c]:
                    assert got["accuracy"][name] == pytest.approx(hits[c] / counts[c])
                    assert got["afp"][name] == pytest.approx(fps[c] / pairs[c])
                    if measure == "iou" and t in KIM_IOU_T:
                        assert res["acc_at_iou"][str(thr)][f"{t:g}"]["per_class"][name] == got["accuracy"][name]


def test_non_string_keys_and_bad_inputs() -> None:
    hm = blocks((0, 0, 20, 20, 1.0))
    res = evaluate({(7, 0): hm}, [rec(7, 0, 0, 0, 20, 20)], orig_size={7: (224, 224)})
    assert res["best_box_iou"]["60"]["mean_over_boxes"] == 1.0
    with pytest.raises(ValueError, match=r"heatmap of image 7, class 0: .*2-D"):
        evaluate({(7, 0): hm[None]}, [rec(7, 0, 0, 0, 20, 20)])
    with pytest.raises(ValueError, match="connectivity"):
        evaluate({(7, 0): np.zeros((7, 7))}, [rec(7, 0, 0, 0, 20, 20)], connectivity=6)
    with pytest.raises(ValueError, match="thresholds"):
        evaluate({(7, 0): hm}, [rec(7, 0, 0, 0, 20, 20)], thresholds=())
    with pytest.raises(ValueError, match="class_idx"):
        evaluate({(7, 14): hm}, [rec(7, 14, 0, 0, 20, 20)])
