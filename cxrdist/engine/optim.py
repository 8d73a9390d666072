"""Optimizers and per-epoch learning-rate schedules of the recipes, and the per-rank batch derivation."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from omegaconf import DictConfig


def derive_batch(global_batch: int, world_size: int, max_per_rank: int) -> tuple[int, int]:
    """Per-rank micro-batch and accumulation steps so that per_rank × accum × world == global_batch.

    Picks the fewest accumulation steps whose micro-batch fits ``max_per_rank``.

    Raises:
        ValueError: naming the numbers to change when no exact split exists.
    """
    if global_batch < 1 or world_size < 1 or max_per_rank < 1:
        raise ValueError(
            f"global_batch {global_batch}, world size {world_size} and max_batch_per_rank "
            f"{max_per_rank} must all be ≥ 1"
        )
    if global_batch % world_size:
        raise ValueError(
            f"global batch {global_batch} is not divisible by the world size {world_size}: change "
            f"the stage's global_batch to a multiple of {world_size}, or run on a number of GPUs that "
            f"divides {global_batch}"
        )
    per_world = global_batch // world_size
    for accum in range(1, per_world + 1):
        if per_world % accum == 0 and per_world // accum <= max_per_rank:
            return per_world // accum, accum
    raise ValueError(f"no split of {per_world} samples per rank fits max_batch_per_rank={max_per_rank}")


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: DictConfig) -> torch.optim.Optimizer:
    """Adam or SGD (momentum, weight decay) from a recipe's ``optim`` node."""
    params = [p for p in params if p.requires_grad]
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.name!r}; choose adam or sgd")


def build_scheduler(opt: torch.optim.Optimizer, cfg: DictConfig):
    """A per-epoch schedule: none, step (lr × gamma after each milestone epoch) or plateau (on a metric)."""
    if cfg.name == "none":
        return None
    if cfg.name == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    if cfg.name == "plateau":
        if cfg.metric not in ("val_loss", "val_auroc", "train_loss"):
            raise ValueError(f"plateau metric {cfg.metric!r}: choose val_loss, val_auroc or train_loss")
        mode = "max" if cfg.metric == "val_auroc" else "min"
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=cfg.gamma, patience=cfg.patience)
        sched.cxrdist_metric = cfg.metric  # which epoch metric step_scheduler feeds it
        return sched
    raise ValueError(f"unknown schedule {cfg.name!r}; choose none, step or plateau")


def step_scheduler(sched, metrics: dict[str, float]) -> None:
    """Advance a schedule at the end of an epoch (plateau schedules read their metric)."""
    if sched is None:
        return
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        metric = metrics.get(sched.cxrdist_metric)
        if metric is None:
            raise ValueError(
                f"plateau schedule needs metric {sched.cxrdist_metric!r}; the epoch gave {sorted(metrics)}"
            )
        sched.step(metric)
    else:
        sched.step()
