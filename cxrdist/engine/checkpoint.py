"""Complete-only, atomic checkpoints with everything an exact resume needs.

A checkpoint is a directory ``ckpt/step-NNNNNNNN``. Every rank writes into ``ckpt/.step-NNNNNNNN.tmp`` (the
strategy's model/optimizer files, and its own RNG states); after a barrier rank 0 writes ``state.pt``
(step, epoch, scheduler, loader position, best metric, tracker id ...) and renames the directory into place,
so a directory without the ``.tmp`` is complete by construction. Loading uses ``weights_only=True``; RNG states
are stored as tensors and plain ints so nothing needs unpickling. Only the newest ``keep_last`` are kept.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrdist import dist
from cxrdist.engine.strategy import Strategy

logger = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and python RNG states in a weights_only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def save_checkpoint(ckpt_root: Path, step: int, strategy: Strategy, state: dict[str, Any], keep_last: int) -> Path:
    """Collective save of step ``step``; returns the final directory (on every rank)."""
    env = strategy.env
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f".step-{step:08d}.tmp"
    if env.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a job killed while saving
        tmp.mkdir(parents=True)
    dist.barrier()
    extra = strategy.save(tmp)
    torch.save(rng_state(), tmp / f"rng-rank{env.rank}.pt")
    dist.barrier()
    if env.is_main:
        torch.save({**state, "strategy_extra": extra, "world_size": env.world_size, "step": step}, tmp / "state.pt")
        if final.exists():  # the same step saved again after a resume: replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(ckpt_root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint %s", final)
    dist.barrier()
    return final


def load_checkpoint(path: Path, strategy: Strategy) -> dict[str, Any]:
    """Restore model/optimizer (through the strategy) and this rank's RNG; return the saved trainer state.

    A checkpoint written at another world size restores model, optimizer and position; ranks beyond the saved
    ones start from rank 0's RNG state (exactness across world sizes holds for the data, see sampler.py).
    """
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    strategy.load(path, state.get("strategy_extra", {}))
    rng_file = path / f"rng-rank{strategy.env.rank}.pt"
    if not rng_file.is_file():
        logger.warning(
            "%s: no RNG state for rank %d (saved at world size %s); using rank 0's",
            path,
            strategy.env.rank,
            state.get("world_size"),
        )
        rng_file = path / "rng-rank0.pt"
    set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    return state


def save_model_weights(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Save plain model weights (e.g. the best-by-val model) atomically: ``{"model": ..., "meta": ...}``.

    Stored as CPU tensors, so weights trained on a GPU load with a plain ``torch.load`` on a machine without one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": weights, "meta": meta}, tmp)
    os.replace(tmp, path)


def load_model_weights(path: Path, model: torch.nn.Module, strict: bool = True) -> dict[str, Any]:
    """Load weights saved by :func:`save_model_weights`; return their meta."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: model weights missing (did the stage that writes them finish?)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(blob["model"], strict=strict)
    return blob.get("meta", {})
