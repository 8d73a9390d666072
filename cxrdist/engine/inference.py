"""Distributed inference over an evaluation loader, gathered to rank 0 and placed by global index.

Each rank runs its share of the split (every sample exactly once across ranks: see data/sampler.py), then the
(index, logits[, maps]) rows of every rank are gathered and scattered into split order with
:func:`~cxrdist.eval.gather.place_by_index`, which fails if an index is missing or filled twice with different
values. Rank 0 then computes on the full split exactly what one process would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cxrdist import dist
from cxrdist.eval.gather import place_by_index
from cxrdist.progress import Progress

ForwardFn = Callable[[torch.nn.Module, dict[str, Any]], torch.Tensor]
MapsFn = Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def run_inference(
    model: torch.nn.Module,
    loader,
    forward: ForwardFn | None = None,
    maps: MapsFn | None = None,
    autocast=None,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """This rank's (index, logits[, maps]) over ``loader`` with the model in eval mode.

    ``maps`` (if given) returns (logits, per-class maps) in one pass and is used instead of ``forward``.
    ``progress`` counts the images of every rank (this rank's batch × world size: ranks run in step).
    """
    world = torch.distributed.get_world_size() if dist.is_distributed() else 1
    was_training = model.training
    model.eval()
    out: dict[str, list[np.ndarray]] = {"index": [], "logits": []}
    if maps is not None:
        out["maps"] = []
    try:
        for batch in loader:
            with (autocast or contextlib.nullcontext)():
                if maps is not None:
                    logits, m = maps(model, batch)
                    out["maps"].append(m.float().cpu().numpy())
                else:
                    logits = forward(model, batch) if forward else model(batch["image"])
            out["index"].append(batch["index"].cpu().numpy())
            out["logits"].append(logits.float().cpu().numpy())
            if progress is not None:
                progress.update(len(out["index"][-1]) * world)
    finally:
        model.train(was_training)
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}


def gather_to_main(local: dict[str, np.ndarray], num_samples: int) -> dict[str, np.ndarray] | None:
    """Gather every rank's rows; on rank 0 return them placed in split order, elsewhere None."""
    parts = dist.all_gather_object(local)
    if not (not dist.is_distributed() or torch.distributed.get_rank() == 0):
        return None
    index = np.concatenate([p["index"] for p in parts if len(p["index"])]).astype(np.int64)
    placed = {}
    for key in local:
        if key == "index":
            continue
        rows = np.concatenate([p[key] for p in parts if len(p["index"])])
        placed[key] = place_by_index(index, rows, num_samples, allow_duplicates_identical=False)
    placed["index"] = np.arange(num_samples)
    return placed
