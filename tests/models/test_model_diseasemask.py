"""kim2021 disease masks (Eq. 3) and the mask-attention classifier (Eq. 4–5)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxrdist.models import build_model
from cxrdist.models.diseasemask import (
    SYMMETRIC_BOX_CLASSES,
    accumulate_disease_masks,
    build_disease_masks,
    finalize_disease_masks,
)


def test_symmetric_flags_are_the_seven_box_classes_but_cardiomegaly():
    assert SYMMETRIC_BOX_CLASSES == (True, False, True, True, True, True, True, True)


def _hand_case() -> torch.Tensor:
    """2 samples × 2 classes × 1×6 maps; class 0 symmetric, class 1 (Cardiomegaly-like) not."""
    cams = torch.zeros(2, 2, 1, 6)
    cams[0, 0, 0] = torch.tensor([2.0, 0, 0, 0, 0, 0])  # L̄ = [2,0,0,0,0,2] → N = [1,0,0,0,0,1]
    cams[1, 0, 0] = torch.tensor([1.0, 0, 3, 0, 0, 0])  # L̄ = [1,0,3,3,0,1] → N = [1/3,0,1,1,0,1/3]
    cams[0, 1, 0] = torch.tensor([0.0, 0, 1, 2, 0, 0])  # L̄ = L → N = [0,0,.5,1,0,0]
    cams[1, 1, 0] = torch.tensor([4.0, 0, 2, 4, 0, 0])  # L̄ = L → N = [1,0,.5,1,0,0]
    return cams


def test_hand_computed_masks():
    cams, symmetric = _hand_case(), [True, False]
    sums, counts = accumulate_disease_masks(cams, symmetric)
    f64 = torch.float64
    torch.testing.assert_close(sums[0, 0], torch.tensor([4 / 3, 0, 1, 1, 0, 4 / 3], dtype=f64))
    torch.testing.assert_close(sums[1, 0], torch.tensor([1.0, 0, 1, 2, 0, 0], dtype=f64))
    assert counts.tolist() == [2.0, 2.0]
    psi = build_disease_masks(cams, symmetric, threshold=0.5)
    # means: class 0 [2/3, 0, .5, .5, 0, 2/3]; class 1 [.5, 0, .5, 1, 0, 0]; kept where >= 0.5
    assert psi[:, 0].tolist() == [[1.0, 0, 1, 1, 0, 1], [1.0, 0, 1, 1, 0, 0]]
    # drop sample 2 for class 1 (its P_c < 0.8): class 1 is sample 1's map alone
    keep = torch.tensor([[True, True], [True, False]])
    psi = build_disease_masks(cams, symmetric, keep=keep)
    assert psi[1, 0].tolist() == [0.0, 0, 1, 1, 0, 0]


def test_flip_sum_changes_the_mask():
    # class 1 flip-summed: L̄ = [0,0,3,3,0,0] and [4,0,6,6,0,4] → N means [1/3,0,1,1,0,1/3]
    flipped = build_disease_masks(_hand_case(), [True, True])
    assert flipped[1, 0].tolist() == [0.0, 0, 1, 1, 0, 0]
    assert not torch.equal(flipped, build_disease_masks(_hand_case(), [True, False]))


def test_constant_maps_and_empty_classes():
    cams = torch.ones(3, 2, 4, 4)
    keep = torch.tensor([[True, False]] * 3)
    sums, counts = accumulate_disease_masks(cams, [True, True], keep)
    assert torch.isfinite(sums).all() and counts.tolist() == [3.0, 0.0]
    psi = finalize_disease_masks(sums, counts)
    assert psi.sum() == 0  # a constant map normalises to 0; a class with no maps gets ψ = 0


def test_distributed_accumulation_equals_single_pass():
    torch.manual_seed(0)
    cams = torch.randn(10, 8, 16, 16)
    keep = torch.rand(10, 8) > 0.3
    single = build_disease_masks(cams, SYMMETRIC_BOX_CLASSES, keep=keep)
    parts = [accumulate_disease_masks(cams[s], SYMMETRIC_BOX_CLASSES, keep[s]) for s in (slice(0, 4), slice(4, 10))]
    sums = parts[0][0] + parts[1][0]
    counts = parts[0][1] + parts[1][1]
    ref_sums, ref_counts = accumulate_disease_masks(cams, SYMMETRIC_BOX_CLASSES, keep)
    torch.testing.assert_close(sums, ref_sums)
    assert torch.equal(counts, ref_counts)
    assert torch.equal(finalize_disease_masks(sums, counts), single)
    assert single.shape == (8, 16, 16) and set(single.unique().tolist()) <= {0.0, 1.0}


def test_renormalize_option():
    sums = torch.tensor([[[0.2, 0.4]]], dtype=torch.float64)
    counts = torch.ones(1, dtype=torch.float64)
    assert finalize_disease_masks(sums, counts).sum() == 0
    assert finalize_disease_masks(sums, counts, renormalize=True).tolist() == [[[0.0, 1.0]]]


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return build_model("diseasemask", mask_size=2).eval()


def test_zero_psi_is_plain_resnet50_classifier(classifier):
    x = torch.randn(2, 3, 64, 64)
    plain = torch.nn.Linear(2048, 14)
    plain.load_state_dict(classifier.fc.state_dict())  # same parameter shapes as nn.Linear
    with torch.no_grad():
        s = classifier.features(x)
        logits, maps = classifier.forward_with_maps(x)
        torch.testing.assert_close(logits, plain(s.mean(dim=(2, 3))), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(maps, torch.einsum("bchw,kc->bkhw", s, plain.weight), atol=1e-5, rtol=1e-5)


def test_masks_weight_each_class(classifier):
    torch.manual_seed(1)
    x, masks = torch.randn(2, 3, 64, 64), (torch.rand(8, 2, 2) > 0.5).float()
    try:
        classifier.set_masks(masks)
        assert classifier.psi.shape == (14, 2, 2) and classifier.psi[8:].sum() == 0
        with torch.no_grad():
            s = classifier.features(x)
            logits, maps = classifier.forward_with_maps(x)
    finally:
        classifier.set_masks(torch.zeros(0, 2, 2))
    attended = (1 + classifier_psi(masks)).unsqueeze(0).unsqueeze(2) * s.unsqueeze(1)  # Ŝ per class: (B,K,C,h,w)
    w, b = classifier.fc.weight, classifier.fc.bias
    torch.testing.assert_close(
        logits, torch.einsum("bkc,kc->bk", attended.mean(dim=(3, 4)), w) + b, atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(maps, torch.einsum("bkchw,kc->bkhw", attended, w), atol=1e-4, rtol=1e-4)


def classifier_psi(masks: torch.Tensor) -> torch.Tensor:
    return F.pad(masks, (0, 0, 0, 0, 0, 14 - masks.shape[0]))


def test_psi_size_must_match_features(classifier):
    with pytest.raises(ValueError, match="psi"):
        classifier(torch.randn(1, 3, 96, 96))


def test_stage_features_are_conv2_to_conv5(classifier):
    with torch.no_grad():
        feats = classifier.stage_features(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]
