"""Heatmap → boxes and the overlap measures, against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdist.eval.boxes import (
    boxes_from_heatmap,
    heatmap_to_image,
    iobb,
    iou,
    overlaps,
    scale_xywh,
    upsample_bilinear,
)


@pytest.mark.parametrize(("shape", "size"), [((7, 7), 224), ((7, 9), (100, 50)), ((300, 200), 224)])
def test_upsampling_matches_torch_bilinear(shape: tuple[int, int], size) -> None:
    torch = pytest.importorskip("torch")
    hm = np.random.default_rng(0).random(shape)
    width, height = (size, size) if isinstance(size, int) else size
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(hm)[None, None], size=(height, width), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(upsample_bilinear(hm, size), ref, rtol=0, atol=1e-12)


def test_heatmap_to_image_range_and_identity() -> None:
    hm = np.random.default_rng(0).random((224, 224)).astype(np.float32)
    img = heatmap_to_image(hm, 224)
    assert img.shape == (224, 224) and img.min() == 0.0 and img.max() == pytest.approx(255.0)
    np.testing.assert_allclose(img, (hm - hm.min()) / (hm.max() - hm.min()) * 255, rtol=1e-6)
    assert heatmap_to_image(hm, (32, 16)).shape == (16, 32)  # size is (width, height)
    assert hm.dtype == np.float32  # input untouched


def test_constant_and_empty_heatmaps_give_no_boxes() -> None:
    for hm in (np.full((7, 7), 5.0), np.zeros((224, 224))):
        img = heatmap_to_image(hm, 224)
        assert not img.any()
        assert boxes_from_heatmap(img, 60).shape == (0, 4)
        assert boxes_from_heatmap(img, 0).shape == (0, 4)  # strict ">": zeros never pass


def test_nan_heatmap_rejected() -> None:
    hm = np.ones((7, 7))
    hm[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        heatmap_to_image(hm)


def test_several_components_and_border() -> None:
    img = np.zeros((224, 224))
    img[10:20, 30:50] = 255  # rows 10..19, cols 30..49
    img[100:101, 100:101] = 200  # a single pixel
    img[0:10, 214:224] = 255  # touches the top and right borders
    boxes = boxes_from_heatmap(img, 60)
    assert sorted(map(tuple, boxes.tolist())) == sorted([(30, 10, 50, 20), (100, 100, 101, 101), (214, 0, 224, 10)])
    assert boxes_from_heatmap(img, 200).tolist() == [[214, 0, 224, 10], [30, 10, 50, 20]]  # 200 is not > 200


def test_connectivity() -> None:
    img = np.zeros((10, 10))
    img[2, 2] = img[3, 3] = 255  # touching diagonally only
    assert boxes_from_heatmap(img, 60, connectivity=8).tolist() == [[2, 2, 4, 4]]
    assert boxes_from_heatmap(img, 60, connectivity=4).tolist() == [[2, 2, 3, 3], [3, 3, 4, 4]]
    with pytest.raises(ValueError, match="connectivity"):
        boxes_from_heatmap(img, 60, connectivity=6)


def test_iou_iobb_containment_both_ways() -> None:
    small, large = np.array([10, 10, 20, 20]), np.array([0, 0, 100, 100])
    # A large predicted box around a small GT: IoU small, and IoBB (over the predicted area) small too.
    assert iou(small, large)[0, 0] == pytest.approx(0.01)
    assert iobb(small, large)[0, 0] == pytest.approx(0.01)
    # A small predicted box inside a large GT: IoU small, IoBB = 1.
    assert iou(large, small)[0, 0] == pytest.approx(0.01)
    assert iobb(large, small)[0, 0] == 1.0


def test_iou_pairwise_shapes_and_values() -> None:
    gt = np.array([[0, 0, 20, 20], [50, 50, 60, 60]])
    pred = np.array([[10, 0, 30, 20], [0, 0, 20, 20], [200, 200, 210, 210]])
    expected = np.array([[200 / 600, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(iou(gt, pred), expected)
    np.testing.assert_allclose(iobb(gt, pred), [[0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])
    both = overlaps(gt, pred)
    np.testing.assert_allclose(both[0], expected)
    np.testing.assert_allclose(both[1], iobb(gt, pred))
    assert iou(gt, np.zeros((0, 4))).shape == (2, 0)


def test_scale_1024_to_224() -> None:
    scaled = scale_xywh(np.array([512.0, 256.0, 256.0, 128.0]), 1024, 224)
    np.testing.assert_allclose(scaled, [[112.0, 56.0, 168.0, 84.0]])
    np.testing.assert_allclose(
        scale_xywh([100, 100, 50, 50], (2048, 1024), 224), [[10.9375, 21.875, 16.40625, 32.8125]]
    )
