"""Losses against hand-computed values; batch derivation."""

from __future__ import annotations

import math

import pytest
import torch

from cxrdist.engine.losses import bce, build_loss, focal, weighted_bce
from cxrdist.engine.optim import derive_batch


def test_weighted_bce_hand_value():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    p, n = 1, 3
    wp, wn = (p + n) / p, (p + n) / n
    terms = [wp * math.log(2), wn * math.log(1 + math.e**2), wn * math.log(1 + math.e**-1), wn * math.log(1 + math.e)]
    assert weighted_bce(logits, y).item() == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_weighted_bce_guards():
    logits = torch.randn(3, 14)
    all_neg = weighted_bce(logits, torch.zeros(3, 14))  # P = 0: no positive term, w_N = 1
    assert torch.isfinite(all_neg) and all_neg.item() == pytest.approx(bce(logits, torch.zeros(3, 14)).item(), rel=1e-6)
    all_pos = weighted_bce(logits, torch.ones(3, 14))
    assert torch.isfinite(all_pos) and all_pos.item() == pytest.approx(bce(logits, torch.ones(3, 14)).item(), rel=1e-6)


def test_focal_hand_value_and_gamma0():
    x, y = torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    p1, p2 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1))
    want = (-(0.25 * (1 - p1) ** 2 * math.log(p1)) - (0.75 * p2**2 * math.log(1 - p2))) / 2
    assert focal(x, y, 0.25, 2.0).item() == pytest.approx(want, rel=1e-6)
    logits, t = torch.randn(4, 14), (torch.rand(4, 14) > 0.7).float()
    w = t * 0.25 + (1 - t) * 0.75
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, t, weight=w)
    assert focal(logits, t, 0.25, 0.0).item() == pytest.approx(ref.item(), rel=1e-6)


def test_focal_is_fp32_under_bf16():
    x = torch.randn(2, 14, dtype=torch.bfloat16)
    assert build_loss("focal", {"alpha": 0.25, "gamma": 2})(x, torch.ones(2, 14)).dtype == torch.float32


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        build_loss("hinge")


@pytest.mark.parametrize(
    "gb,world,cap,want",
    [
        (512, 1, 64, (64, 8)),
        (512, 2, 64, (64, 4)),
        (96, 4, 32, (24, 1)),
        (8, 8, 64, (1, 1)),
        (64, 3, 64, None),
        (512, 1, 3, (2, 256)),
    ],
)
def test_derive_batch(gb, world, cap, want):
    if want is None:
        with pytest.raises(ValueError, match="not divisible by the world size 3"):
            derive_batch(gb, world, cap)
    else:
        assert derive_batch(gb, world, cap) == want
