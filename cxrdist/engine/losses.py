"""Losses of the recipes: BCE with logits, batch-weighted BCE (Wang 2017 W-CEL / kim2021 Eq. 10), focal loss
(zhao2021 Eq. 4). All are computed in fp32 whatever the autocast dtype, since the log terms lose too much in bf16.

Every loss is ``loss(logits, targets, counts=None)``: ``counts`` is the (P, N) of the optimizer step's whole global
batch (the loader's ``step_label_counts``); only the batch-weighted BCE uses it, the others ignore it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

LOSSES = ("bce", "weighted_bce", "focal")


def bce(logits: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy with logits over all B×14 entries (``counts`` unused)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
    """kim2021 Eq. 10 (= Wang et al.'s W-CEL): w_P = (P+N)/P on positives, w_N = (P+N)/N on negatives, summed.

    P and N are the counts of 1s and 0s over the whole label matrix of the optimizer step's global batch (a
    choice: the batch's whole B×14 matrix): ``counts`` = (P, N) as the loader computes them for every micro-batch of
    the step, so 8 ranks × 4 images or 1 rank × 8 accumulated micro-batches weight exactly as one batch of 32 would.
    Without ``counts`` (validation: the whole split) they are counted on ``targets``. A batch with P = 0 (or N = 0)
    has no positive (negative) term, so its weight is never a division by zero. The sum is divided by the number
    of entries of ``targets`` so the scale does not grow with the batch (a constant factor on Eq. 10); with
    micro-batches of equal size, the mean over ranks and accumulation steps is then the loss of the global batch.
    """
    x, y = logits.float(), targets.float()
    if counts is None:
        pos = y.sum()
        neg = y.numel() - pos
    else:
        pos, neg = counts.to(device=y.device, dtype=torch.float32).unbind()
    total = pos + neg
    w_p = torch.where(pos > 0, total / pos.clamp(min=1), torch.zeros_like(pos))
    w_n = torch.where(neg > 0, total / neg.clamp(min=1), torch.zeros_like(neg))
    weights = y * w_p + (1 - y) * w_n
    return (F.binary_cross_entropy_with_logits(x, y, reduction="none") * weights).sum() / y.numel()


def focal(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """zhao2021 Eq. 4: FL = −[y α (1−p)^γ log p + (1−y)(1−α) p^γ log(1−p)], mean over entries, in fp32.

    At γ = 0 it is BCE with weight α on positives and 1−α on negatives.
    """
    x, y = logits.float(), targets.float()
    p = torch.sigmoid(x)
    log_p, log_not_p = F.logsigmoid(x), F.logsigmoid(-x)  # stable log p and log(1−p)
    loss = -(y * alpha * (1 - p).pow(gamma) * log_p + (1 - y) * (1 - alpha) * p.pow(gamma) * log_not_p)
    return loss.mean()


def build_loss(name: str, args: dict[str, Any] | None = None):
    """The loss function of a recipe: ``(logits, targets, counts=None) -> scalar``."""
    args = dict(args or {})
    if name == "bce":
        return bce
    if name == "weighted_bce":
        return weighted_bce
    if name == "focal":
        alpha, gamma = float(args.pop("alpha", 0.25)), float(args.pop("gamma", 2.0))
        if args:
            raise ValueError(f"focal loss: unknown arguments {sorted(args)} (known: alpha, gamma)")
        return lambda logits, targets, counts=None: focal(logits, targets, alpha, gamma)
    raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
