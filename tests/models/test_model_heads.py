"""CAM, global pooling (avg / max / LSE) and the grouped per-class head."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cxrdist.models.cam import class_activation_maps, upsample_maps
from cxrdist.models.heads import ClassWiseLinear, global_pool


def test_cam_is_the_classifier_at_every_position():
    torch.manual_seed(0)
    feats, linear = torch.randn(2, 6, 3, 4), torch.nn.Linear(6, 5)
    maps = class_activation_maps(feats, linear.weight)
    assert maps.shape == (2, 5, 3, 4)
    expected = linear(feats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) - linear.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(maps, expected)
    # GAP → linear equals the mean of the biased CAM.
    biased = class_activation_maps(feats, linear.weight, linear.bias)
    torch.testing.assert_close(biased.mean(dim=(2, 3)), linear(feats.mean(dim=(2, 3))))
    # a 1×1-conv weight works as well
    torch.testing.assert_close(class_activation_maps(feats, linear.weight[:, :, None, None]), maps)
    with pytest.raises(ValueError):
        class_activation_maps(feats, torch.randn(5, 7))


def test_upsample_maps():
    maps = torch.arange(4.0).view(1, 1, 2, 2)
    up = upsample_maps(maps, 8)
    assert up.shape == (1, 1, 8, 8)
    assert torch.allclose(up.mean(), maps.mean())
    assert upsample_maps(maps, (4, 6)).shape == (1, 1, 4, 6)


def test_global_pool_modes():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(global_pool(x, "avg"), x.mean(dim=(2, 3)))
    torch.testing.assert_close(global_pool(x, "max"), x.amax(dim=(2, 3)))
    # Wang et al.'s formula, computed naively in float64 for moderate values.
    r = 10.0
    naive = (torch.log(torch.exp(r * x.double()).mean(dim=(2, 3))) / r).float()
    torch.testing.assert_close(global_pool(x, "lse", r), naive, atol=1e-5, rtol=1e-5)
    # LSE interpolates between average (r → 0) and max (r → ∞: within log(S)/r of the max).
    # (float64: in float32, log(S) − log(S) cancellation costs ~4e-7 / r)
    torch.testing.assert_close(global_pool(x.double(), "lse", 1e-4), x.double().mean(dim=(2, 3)), atol=1e-3, rtol=0)
    gap = x.amax(dim=(2, 3)) - global_pool(x, "lse", 1e3)
    assert (gap >= -1e-5).all() and (gap <= math.log(20) / 1e3 + 1e-5).all()
    # stable where exp(r x) overflows
    big = global_pool(x * 100 + 1000, "lse", 10.0)
    assert torch.isfinite(big).all()
    with pytest.raises(ValueError):
        global_pool(x, "median")


def test_class_wise_linear_is_k_independent_classifiers():
    torch.manual_seed(0)
    head = ClassWiseLinear(6, 4)
    assert head.weight.shape == (4, 6) and head.bias.shape == (4,)
    pooled = torch.randn(3, 4, 6)
    expected = torch.stack([pooled[:, k] @ head.weight[k] + head.bias[k] for k in range(4)], dim=1)
    torch.testing.assert_close(head(pooled), expected)
    # state dict interchangeable with nn.Linear
    linear = torch.nn.Linear(6, 4)
    linear.load_state_dict(head.state_dict())


def test_forward_gated_equals_materialised_features():
    torch.manual_seed(0)
    head = ClassWiseLinear(6, 4)
    feats, gate = torch.rand(2, 6, 3, 3), torch.rand(2, 4, 3, 3) + 1
    logits, maps = head.forward_gated(feats, gate)
    attended = gate.unsqueeze(2) * feats.unsqueeze(1)  # (B, K, C, h, w)
    torch.testing.assert_close(logits, head(attended.mean(dim=(3, 4))))
    torch.testing.assert_close(maps, torch.einsum("bkchw,kc->bkhw", attended, head.weight))
    torch.testing.assert_close(maps.mean(dim=(2, 3)) + head.bias, logits)
    # a gate shared by the batch broadcasts
    shared_logits, _ = head.forward_gated(feats, gate[:1])
    torch.testing.assert_close(shared_logits[0], logits[0])
    torch.testing.assert_close(F.relu(feats), feats)  # (inputs here are post-ReLU, as in the models)
