"""What the tracker gets beside the figures: ROC points, the bbox per-image rows, a box overlay with its boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import auc

from cxrdist.eval.box_overlay import box_overlay
from cxrdist.eval.tracker_tables import bbox_image_rows, roc_points
from cxrdist.labels import LABEL_INDEX, LABELS


def test_roc_points_keep_each_curve_within_the_cap():
    rng = np.random.default_rng(0)
    labels = (rng.random((2000, 14)) < 0.3).astype(int)
    labels[:, 13] = 0  # one class without positives: no curve
    scores = labels + rng.normal(0, 1.0, labels.shape)
    rows = roc_points(labels, scores, max_points=50)
    by_class = {n: [(f, t) for c, f, t in rows if c == n] for n in LABELS}
    assert by_class[LABELS[13]] == [] and all(0 < len(by_class[n]) <= 50 for n in LABELS[:13])
    first = np.array(by_class[LABELS[0]])
    assert tuple(first[0]) == (0.0, 0.0) and tuple(first[-1]) == (1.0, 1.0)
    assert 0.7 < auc(first[:, 0], first[:, 1]) < 0.85  # the subsampled curve still has the curve's area


def test_bbox_rows_name_labels_top_probabilities_and_ious():
    labels = np.zeros((2, 14))
    labels[0, LABEL_INDEX["Mass"]] = 1
    logits = np.full((2, 14), -5.0)
    logits[0, LABEL_INDEX["Mass"]], logits[0, LABEL_INDEX["Nodule"]] = 2.0, 0.0
    per_box = {"key": ["a", "a"], "class_idx": [4, 4], "best_iou": {"60": [0.5, 0.125], "180": [0.0, 0.0]}}
    rows = bbox_image_rows(["a", "b"], labels, logits, per_box, "60", {"a": "eval/boxes/Mass/a"}, top=2)
    assert rows[0] == ["a", "Mass", "Mass 0.881, Nodule 0.500", "Mass 0.500, Mass 0.125", "eval/boxes/Mass/a"]
    assert rows[1][:2] == ["b", "No Finding"] and rows[1][3:] == ["", ""]


def test_box_overlay_keeps_the_boxes_as_data(tmp_path: Path):
    image = np.full((40, 60), 100, np.uint8)
    heat = np.zeros((4, 6), np.float32)
    heat[0, 0] = 1.0
    spec = box_overlay(image, heat, np.array([[1.5, 2.0, 10.0, 12.5]]), np.zeros((0, 4)), "Mass", tmp_path / "o.png")
    png = np.asarray(Image.open(spec["path"]))
    assert png.shape == (40, 60, 3) and not np.array_equal(png[0, 0], png[-1, -1])  # the heatmap is blended in
    assert spec["boxes"]["ground_truth"] == [
        {"minX": 1.5, "minY": 2.0, "maxX": 10.0, "maxY": 12.5, "class_id": 5, "caption": "Mass (ground truth)"}
    ]
    assert spec["boxes"]["predictions"] == [] and spec["class_labels"] == {"5": "Mass"}
