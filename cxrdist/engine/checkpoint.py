"""Complete-only checkpoints: write new, then switch; a marker written last and checked on load; recovery.

A checkpoint is a directory ``ckpt/step-NNNNNNNN`` holding the strategy's model/optimizer files, every rank's
RNG state, ``state.pt`` (step, scheduler, loader position, trainer state ...) and, written last,
``COMPLETE.json`` listing every file with its size. Only a directory whose marker is there and whose files
match it counts (:func:`is_complete`); :func:`list_checkpoints` and loading check it. The save protocol
(:func:`save_checkpoint`), each step of which a kill may interrupt:

1. ``tmp``: rank 0 creates ``.step-N.tmp`` (removing a leftover of an interrupted save first);
2. ``model``, ``rng``: every rank writes its files there (the strategy's, then its RNG state);
3. ``state``: rank 0 writes ``state.pt`` and fsyncs every file;
4. ``marker``: rank 0 writes ``COMPLETE.json``; from here on the new checkpoint is complete;
5. ``retire``: if step N was saved before (an epoch end on a checkpoint step), ``step-N`` becomes
   ``.step-N.old`` (rename: complete, no longer listed);
6. ``switch``: ``.step-N.tmp`` becomes ``step-N`` (rename);
7. ``drop_old``: ``.step-N.old`` is deleted;
8. ``prune``: checkpoints beyond ``keep_last`` are renamed ``.step-M.del``, then deleted.

:func:`recover_checkpoints` (rank 0, before a resume) finishes or undoes what a kill left: a complete ``.tmp``
is switched in (it is the newest state), a complete ``.old`` is put back if its step has nothing better, and
everything incomplete, ``.old`` or ``.del`` is removed, each with a warning. So at every kill point the resume
finds a complete checkpoint: the new one from step 4 on, the previous one before.

Fault injection (tests only): ``CXRDIST_TEST_FAULT=ACTION:POINT[:N[:RANK]]`` makes rank RANK (default 0) stop
the N-th time (default 1) it reaches POINT, one of the step names above (``drop_old`` and ``prune`` stop midway
through their deletion) or ``epoch_end`` (the trainer, after an epoch's last step, before its end-of-epoch
work). ACTION ``kill`` sends SIGKILL to the process; ``pause`` logs "test fault: paused at POINT" and waits to
be killed (e.g. by a Slurm requeue). It never fires in a requeued Slurm attempt (``SLURM_RESTART_COUNT`` > 0),
so the attempt that resumes is not stopped again. Never set it outside tests.

Loading uses ``weights_only=True``; RNG states are tensors and plain ints so nothing needs unpickling. A write
that fails (disk full) raises an error naming the file on every rank; the new ``.tmp`` is removed and the
previous checkpoint stays the newest.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrdist import dist
from cxrdist.engine.strategy import Strategy
from cxrdist.files import WriteFailed, write_failure

logger = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_SIDE_DIR = re.compile(r"^\.step-(\d{8})\.(tmp|old|del)$")  # a save's new, retired or pruned dir
MARKER = "COMPLETE.json"
FAULT_ENV = "CXRDIST_TEST_FAULT"
FAULT_POINTS = ("tmp", "model", "rng", "state", "marker", "retire", "switch", "drop_old", "prune", "epoch_end")
_fault_hits: dict[str, int] = {}


# --- fault injection (tests only) ---------------------------------------------------------------------------


def fault_point(point: str, rank: int = 0) -> None:
    """Test-only: stop here if ``CXRDIST_TEST_FAULT`` names this point (see the module docstring)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        return
    action, want, *rest = spec.split(":")
    if action not in ("kill", "pause") or want not in FAULT_POINTS:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected kill|pause:POINT[:N[:RANK]], POINT one of {FAULT_POINTS}")
    if want != point or rank != (int(rest[1]) if len(rest) > 1 else 0):
        return
    _fault_hits[point] = hits = _fault_hits.get(point, 0) + 1
    if hits != (int(rest[0]) if rest else 1):
        return
    logger.warning("test fault: %s at %s (occurrence %d)", "paused" if action == "pause" else "killed", point, hits)
    for handler in logging.getLogger().handlers:
        handler.flush()
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    while True:  # pause: wait for the kill
        time.sleep(1.0)


# --- RNG ----------------------------------------------------------------------------------------------------


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


# --- completeness -------------------------------------------------------------------------------------------


def _paths(ckpt_root: Path, step: int) -> tuple[Path, Path, Path]:
    final = ckpt_root / f"step-{step:08d}"
    return final, ckpt_root / f".{final.name}.tmp", ckpt_root / f".{final.name}.old"


def is_complete(path: Path) -> bool:
    """True when ``path`` holds its marker and every file the marker lists, at the listed size."""
    try:
        files = json.loads((path / MARKER).read_text())["files"]
        return bool(files) and all((path / rel).stat().st_size == size for rel, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if _STEP_DIR.match(p.name)]
    return sorted((p for p in found if is_complete(p)), key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _write_marker(path: Path, step: int, world_size: int) -> None:
    files = {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
    marker = path / MARKER
    with open(marker, "w") as f:
        json.dump({"step": step, "world_size": world_size, "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _remove_tree(path: Path, point: str | None = None) -> None:
    """Delete a retired checkpoint dir, largest file first; a failure (e.g. NFS) only warns (recovery retries)."""
    try:
        files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
        if files:
            files[0].unlink()
        if point is not None:
            fault_point(point)  # midway through the deletion
        shutil.rmtree(path)
    except OSError as e:
        logger.warning("could not delete %s (%s); it is not a checkpoint any more, delete it by hand", path, e)


# --- save ---------------------------------------------------------------------------------------------------


def _write(path: Path, fn: Callable[[], Any], kept: str) -> Any:
    """Run a write of ``path``; a failure (disk full: OSError, or torch's C++ writer's RuntimeError) names it."""
    try:
        return fn()
    except (OSError, RuntimeError) as e:
        raise write_failure(path, e, kept) from e


def _phase(env: dist.DistEnv, active: bool, fn: Callable[[], None], tmp: Path) -> None:
    """Run ``fn`` where ``active``; if it failed on any rank, rank 0 removes ``tmp`` and every rank raises.

    The failing rank raises its own error; the others raise its message (a write failure as WriteFailed), so no
    rank is left waiting in a collective of a save that cannot complete.
    """
    own, failure = None, None
    if active:
        try:
            fn()
        except Exception as e:  # every rank must hear of it, whatever it is
            own, failure = e, (f"rank {env.rank}: {e}" if not isinstance(e, WriteFailed) else str(e), type(e).__name__)
    errors = [f for f in dist.all_gather_object(failure) if f]
    if not errors:
        return
    if env.is_main and tmp.exists():  # every rank is past its writes (the gather above): free the space
        shutil.rmtree(tmp, ignore_errors=True)
    if own is not None:
        raise own
    message, kind = errors[0]
    raise WriteFailed(message) if kind == WriteFailed.__name__ else RuntimeError(f"checkpoint not saved: {message}")


def save_checkpoint(ckpt_root: Path, step: int, strategy: Strategy, state: dict[str, Any], keep_last: int) -> Path:
    """Collective save of step ``step`` (the protocol of the module docstring); returns the final directory."""
    env = strategy.env
    final, tmp, _ = _paths(ckpt_root, step)
    prev = latest_checkpoint(ckpt_root)
    kept = f"the previous checkpoint {prev} is kept" if prev else "there is no earlier checkpoint to keep"
    kept = f"checkpoint of step {step} not saved, {kept}; free space and resubmit to resume from it"

    def prepare() -> None:
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a save that was interrupted
        _write(tmp, lambda: tmp.mkdir(parents=True), kept)

    _phase(env, env.is_main, prepare, tmp)
    fault_point("tmp", env.rank)
    extra: dict[str, Any] = {}

    def rank_files() -> None:
        extra.update(_write(tmp, lambda: strategy.save(tmp), kept) or {})
        fault_point("model", env.rank)
        rng = tmp / f"rng-rank{env.rank}.pt"
        _write(rng, lambda: torch.save(rng_state(), rng), kept)
        fault_point("rng", env.rank)

    _phase(env, True, rank_files, tmp)

    def seal() -> None:
        blob = {**state, "strategy_extra": extra, "world_size": env.world_size, "step": step}
        _write(tmp / "state.pt", lambda: torch.save(blob, tmp / "state.pt"), kept)
        _write(tmp, lambda: _fsync_tree(tmp), kept)
        fault_point("state")
        _write(tmp / MARKER, lambda: _write_marker(tmp, step, env.world_size), kept)
        fault_point("marker")

    _phase(env, env.is_main, seal, tmp)
    if env.is_main:
        _switch(ckpt_root, step, keep_last)
    dist.barrier()
    return final


def _switch(ckpt_root: Path, step: int, keep_last: int) -> None:
    """Rank 0: make the complete ``.tmp`` the checkpoint of ``step``; retire what it replaces; prune."""
    final, tmp, old = _paths(ckpt_root, step)
    if final.exists():  # the same step saved again (an epoch end on a checkpoint step): keep it until replaced
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
        fault_point("retire")
    os.rename(tmp, final)
    fault_point("switch")
    if old.exists():
        _remove_tree(old, "drop_old")
    for stale in list_checkpoints(ckpt_root)[:-keep_last] if keep_last > 0 else []:
        dead = stale.with_name(f".{stale.name}.del")
        os.rename(stale, dead)
        _remove_tree(dead, "prune")
    logger.info("checkpoint %s", final)


def recover_checkpoints(ckpt_root: Path) -> list[str]:
    """Rank 0, before resuming: finish or undo interrupted saves (see the module docstring); return what it did.

    Leftovers that cannot be deleted (e.g. files an NFS client still holds) are warned about and stay hidden.
    """
    if not ckpt_root.is_dir():
        return []
    done: list[str] = []
    names = [p.name for p in ckpt_root.iterdir()]
    steps = sorted({int(m.group(1)) for n in names if (m := _STEP_DIR.match(n) or _SIDE_DIR.match(n))})
    for step in steps:
        final, tmp, old = _paths(ckpt_root, step)
        dead = ckpt_root / f".{final.name}.del"
        if dead.exists():
            _remove_tree(dead)
            done.append(f"removed {dead.name} (a pruning that was interrupted)")
        if tmp.exists() and is_complete(tmp):  # interrupted after its marker: only the switch was left
            if final.exists():
                if old.exists():
                    shutil.rmtree(old)
                os.rename(final, old)
            os.rename(tmp, final)
            done.append(f"switched in {tmp.name} (complete; its save was interrupted before the switch)")
        elif tmp.exists():
            _remove_tree(tmp)
            done.append(f"removed {tmp.name} (incomplete: its save was interrupted)")
        if old.exists():
            if not is_complete(final) and is_complete(old):
                if final.exists():
                    shutil.rmtree(final)
                os.rename(old, final)
                done.append(f"restored {final.name} from {old.name}")
            else:
                _remove_tree(old)
                done.append(f"removed {old.name} (replaced by {final.name})")
        if final.exists() and not is_complete(final):  # (if it cannot go, it is not listed either)
            _remove_tree(final)
            done.append(f"removed {final.name} (incomplete: no {MARKER} or files missing)")
    for line in done:
        logger.warning("%s: %s", ckpt_root, line)
    return done


# --- load ---------------------------------------------------------------------------------------------------


def load_checkpoint(path: Path, strategy: Strategy) -> dict[str, Any]:
    """Restore model/optimizer (through the strategy) and this rank's RNG; return the saved trainer state.

    Rank 0 checks the marker first. A checkpoint written at another world size restores model, optimizer and
    position; ranks beyond the saved ones start from rank 0's RNG state (exactness across world sizes holds
    for the data, see sampler.py).
    """
    if strategy.env.is_main and not is_complete(path):
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no {MARKER}, or files missing or truncated)")
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
    kept = f"{path} is unchanged" if path.exists() else f"{path} was not written"
    try:
        torch.save({"model": weights, "meta": meta}, tmp)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        raise write_failure(tmp, e, kept) from e
    os.replace(tmp, path)


def read_model_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The (state dict, meta) of a file written by :func:`save_model_weights`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: model weights missing (did the stage that writes them finish?)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return blob["model"], blob.get("meta", {})


def load_model_weights(path: Path, model: torch.nn.Module, strict: bool = True) -> dict[str, Any]:
    """Load weights saved by :func:`save_model_weights`; return their meta."""
    state, meta = read_model_weights(path)
    model.load_state_dict(state, strict=strict)
    return meta


def ready_model(model: torch.nn.Module, state: dict[str, torch.Tensor], device: torch.device | str) -> torch.nn.Module:
    """Weights into a built model (strict), eval mode, on ``device``: the evaluator's and predict's one way to get
    a trained model ready (from a run's weights file or an exported model's safetensors)."""
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)


def load_trained(model: torch.nn.Module, weights: Path, device: torch.device | str) -> torch.nn.Module:
    """Build → load weights → to device, written once: ``model`` (just built) with the weights file ``weights``
    (:func:`save_model_weights`'s) loaded, in eval mode, on ``device`` (scoring, evaluation, a frozen auxiliary
    network; :func:`ready_model` does the same from a state dict, e.g. an export's)."""
    return ready_model(model, read_model_weights(weights)[0], device)
