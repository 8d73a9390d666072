"""Fill a key-aligned sidecar collectively and resumably: each rank computes its share of the missing rows.

The sidecar's ``filled`` mask is the resume point: a restarted stage reads it and computes only the rows not yet
marked. Work goes in rounds of ``round_rows`` missing rows, split into contiguous blocks by rank; after a round
every rank has written its rows, and rank 0 marks the round's union filled, so a kill loses at most one round.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrdist import dist
from cxrdist.data.loaders.base import BaseLoader
from cxrdist.data.sidecar import create_sidecar, filled_mask, mark_filled, write_rows
from cxrdist.engine.stages import StageContext
from cxrdist.engine.strategy import resolve_precision

logger = logging.getLogger(__name__)


def sidecar_splits(ctx: StageContext) -> list[str]:
    """The splits a per-sample sidecar must cover: train, val and the evaluation splits."""
    return list(dict.fromkeys(["train", "val", *ctx.cfg.eval.splits]))


def inference_autocast(ctx: StageContext) -> contextlib.AbstractContextManager:
    """The engine's precision for an inference pass (bf16 autocast on CUDA by default, fp32 on the CPU)."""
    dtype = resolve_precision(ctx.cfg.engine.precision, ctx.env.device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(ctx.env.device.type, dtype=dtype)


@torch.no_grad()
def fill_sidecar(
    ctx: StageContext,
    path: str | Path,
    loader: BaseLoader,
    compute: Callable[[dict[str, Any]], np.ndarray],
    *,
    shape: tuple[int, ...],
    dtype: str,
    kind: str,
    notes: dict[str, Any] | None = None,
    round_rows: int = 4096,
) -> dict[str, int]:
    """Write ``compute(batch)`` rows (B, *shape) for every sample of ``loader``'s split into the sidecar at ``path``.

    Collective: every rank calls it with an evaluation loader of the same split. Returns the split's row count,
    the rows computed by this call over all ranks (each missing row exactly once) and the rows found filled.
    """
    env = ctx.env
    keys = loader.reader.keys
    if env.is_main:
        create_sidecar(path, keys, shape, dtype, kind, notes)  # keeps an existing, matching sidecar
    dist.barrier()
    todo = np.flatnonzero(~filled_mask(path))
    batch = loader.spec.batch_per_rank
    computed = 0
    for start in range(0, len(todo), round_rows):
        mine = np.array_split(todo[start : start + round_rows], env.world_size)[env.rank]
        for b in loader.iterate_indices([mine[i : i + batch] for i in range(0, len(mine), batch)]):
            rows = np.asarray(compute(b), dtype=dtype)
            write_rows(path, b["index"].cpu().numpy(), rows)
        computed += len(mine)
        written = dist.all_gather_object(mine)  # also the barrier: every rank's rows are on disk
        if env.is_main:
            mark_filled(path, np.concatenate(written))
    total = int(sum(dist.all_gather_object(computed)))
    if env.is_main:
        logger.info("%s: %d rows computed, %d were already filled", path, total, len(keys) - len(todo))
    return {"rows": len(keys), "computed": total, "already_filled": len(keys) - len(todo)}


def fill_split_sidecars(
    ctx: StageContext,
    name: str,
    transforms: Any,
    compute: Callable[[dict[str, Any]], np.ndarray],
    *,
    shape: tuple[int, ...],
    dtype: str,
    kind: str,
    notes: dict[str, Any] | None = None,
) -> dict[str, dict[str, int]]:
    """The sidecar ``<stage dir>/<split>/<name>`` of every split (:func:`sidecar_splits`), each filled by
    :func:`fill_sidecar` through an evaluation loader with ``transforms``; returns each split's counts."""
    out = {}
    for split in sidecar_splits(ctx):
        spec = ctx.loader_spec(
            split=split, train=False, transforms=transforms, batch=ctx.cfg.loader.eval_batch_per_rank
        )
        out[split] = fill_sidecar(
            ctx, ctx.stage_dir / split / name, ctx.make_loader(spec), compute, shape=shape, dtype=dtype, kind=kind,
            notes=notes,
        )  # fmt: skip
    return out
