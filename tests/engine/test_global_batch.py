"""The batch-weighted BCE counts P and N over the optimizer step's global batch (any world size and accumulation),
and the BatchNorm record and warning. The end-to-end weights comparison is in test_invariance.py."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrdist.data.loaders.base import LoaderSpec
from cxrdist.data.loaders.factory import build_loader
from cxrdist.data.sampler import TrainSampler
from cxrdist.engine.losses import build_loss, weighted_bce
from cxrdist.engine.strategy import log_batchnorm


def _counts(y: torch.Tensor) -> torch.Tensor:
    pos = float(y.sum())
    return torch.tensor([pos, y.numel() - pos], dtype=torch.float64)


def test_micro_batches_with_global_counts_give_the_global_loss_and_gradient():
    torch.manual_seed(0)
    x = torch.randn(32, 14, requires_grad=True)
    y = (torch.rand(32, 14) > 0.9).float()
    whole = weighted_bce(x, y)
    (g_whole,) = torch.autograd.grad(whole, x)
    # 8 ranks × 4 images (or 1 rank × 8 accumulated micro-batches): the mean of the micro-batch losses
    parts = [weighted_bce(x[i : i + 4], y[i : i + 4], _counts(y)) for i in range(0, 32, 4)]
    split = torch.stack(parts).mean()
    (g_split,) = torch.autograd.grad(split, x)
    assert split.item() == pytest.approx(whole.item(), rel=1e-6)
    torch.testing.assert_close(g_split, g_whole, rtol=1e-5, atol=1e-8)
    # counting on each micro-batch alone (what a per-rank loss did) is another loss
    local = torch.stack([weighted_bce(x[i : i + 4], y[i : i + 4]) for i in range(0, 32, 4)]).mean()
    assert abs(local.item() - whole.item()) > 1e-3


def test_every_loss_takes_the_counts():
    x, y = torch.randn(4, 14), (torch.rand(4, 14) > 0.7).float()
    for name in ("bce", "focal"):
        loss = build_loss(name)
        assert torch.equal(loss(x, y, _counts(y)), loss(x, y))
    assert torch.equal(build_loss("weighted_bce")(x, y, _counts(y)), weighted_bce(x, y))


@pytest.mark.parametrize("world,accum", [(1, 1), (1, 4), (2, 2), (4, 1)])
def test_sampler_step_indices_are_every_rank_and_micro_batch_of_the_step(world: int, accum: int):
    base = np.arange(70)
    samplers = [
        TrainSampler(base, world_size=world, rank=r, batch_per_rank=16 // world // accum, accum=accum, seed=5)
        for r in range(world)
    ]
    plans = [s.remaining_batches() for s in samplers]
    steps = samplers[0].steps_per_epoch // accum
    assert steps == 4
    for j in range(steps):
        micro = [b for plan in plans for b in plan[j * accum : (j + 1) * accum]]
        union = np.sort(np.concatenate([idx for idx, _ in micro]))
        for _, pos in micro:
            assert np.array_equal(np.sort(samplers[0].step_indices(0, int(pos[0]))), union)
    # the same optimizer step holds the same samples whatever the geometry
    one = TrainSampler(base, world_size=1, rank=0, batch_per_rank=16, seed=5)
    assert np.array_equal(one.step_indices(0, 16), samplers[-1].step_indices(0, 16 + 15))


def test_loader_hands_out_the_steps_label_counts(shard_root: Path):
    ops = [{"op": "resize", "size": 32}]
    spec = LoaderSpec(root=str(shard_root), split="train", train=True, batch_per_rank=4, accum=2, ops=ops, workers=0)
    ranks = [list(build_loader("torch", spec, world_size=2, rank=r)) for r in range(2)]
    labels = build_loader("torch", spec, world_size=2, rank=0).reader.labels
    for j in range(len(ranks[0]) // 2):
        micro = [b for r in ranks for b in r[2 * j : 2 * j + 2]]
        step = np.concatenate([b["index"].numpy() for b in micro])
        pos = float(labels[step].sum())
        for b in micro:
            assert b["step_label_counts"].tolist() == [pos, 16 * 14 - pos]


def test_batchnorm_log_warns_when_accumulation_shrinks_it(caplog):
    record = {"layers": 2, "synced": True, "images": 8, "global_batch": 32}
    with caplog.at_level(logging.INFO, logger="cxrdist.engine.strategy"):
        log_batchnorm("train", record, world=2, micro=4, accum=4)
        log_batchnorm("train", {**record, "images": 32}, world=2, micro=16, accum=1)
        log_batchnorm("train", {"layers": 0}, world=2, micro=16, accum=1)
    warn, info = [r for r in caplog.records if r.name == "cxrdist.engine.strategy"]
    assert warn.levelno == logging.WARNING and "over 8 images (2 ranks × 4 (synchronised))" in warn.getMessage()
    assert "gradient accumulation (4 micro-batches per step)" in warn.getMessage()
    assert info.levelno == logging.INFO and "over 32 images" in info.getMessage()
