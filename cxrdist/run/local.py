"""Local ranks: start ``nproc`` processes of a run on this machine (gloo on CPU, NCCL with GPUs).

``run_local`` prepares the run dir and runs it (tests, benchmarks); ``run_prepared`` is ``launch/local.py``'s
second half. The ranks meet on a loopback port (``dist.free_port``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from cxrdist.cli import UsageError
from cxrdist.config import to_container
from cxrdist.dist import free_port, local_rank_env
from cxrdist.run import rundir
from cxrdist.run.prepare import prepare_run
from cxrdist.run.session import run_rank


def _spawn_entry(
    rank: int,
    world: int,
    port: int,
    cfg_dict: dict[str, Any],
    run_dir: str,
    stages_fn: Callable | None,
    lock: str | None = None,
) -> None:
    os.environ.update(local_rank_env(rank, world, port))
    run_rank(cfg_dict, run_dir, stages_fn, lock)


def check_local_gpus(nproc: int) -> None:
    """With CUDA, ``nproc`` local ranks need as many visible GPUs: NCCL refuses two ranks on one GPU
    ("Duplicate GPU detected", seen on a 1-GPU H100 machine with nproc 2). Slurm jobs are matched by the launcher
    (tasks per node = GPUs per node), and a per-task GPU binding there is valid, so the check lives here."""
    if nproc < 1:
        raise UsageError(f"--nproc must be ≥ 1, got {nproc}")
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise UsageError(
            f"{nproc} ranks on this node but {torch.cuda.device_count()} visible GPU(s): NCCL needs one GPU per "
            f"rank; start at most {torch.cuda.device_count()} (--nproc)"
        )


def spawn_ranks(fn: Callable, nproc: int, args: tuple, run_dir: Path) -> None:
    """Start ``nproc`` local ranks of ``fn(rank, *args)``; a failure is raised as the first failing rank's error."""
    started = time.time()
    try:
        mp.start_processes(fn, args=args, nprocs=nproc, join=True, start_method="spawn")
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
        first = rundir.first_failure(run_dir, since=started)
        if first is None:
            raise
        raise rundir.RankFailedError(rundir.failure_line(first, run_dir)) from e


def run_local(cfg, nproc: int = 1, force: bool = False, stages_fn: Callable | None = None) -> Path:
    """Run a method on this machine with ``nproc`` processes (gloo on CPU); returns the run dir.

    The run dir's lock is held from before the config is saved until the ranks end.
    """
    check_local_gpus(nproc)
    lock = rundir.new_token()
    run_dir = prepare_run(cfg, force=force, lock=lock, role="a local run")
    run_prepared(cfg, run_dir, nproc, stages_fn, lock)
    return run_dir


def run_prepared(
    cfg, run_dir: Path, nproc: int = 1, stages_fn: Callable | None = None, lock: str | None = None
) -> None:
    """Start ``nproc`` local ranks on a run dir that :func:`prepare_run` made (``launch/local.py``'s second half);
    ``lock``: the token prepare_run took the run dir with, given up when the ranks end."""
    cfg_dict = to_container(cfg)
    try:
        if nproc == 1:
            for k in ("RANK", "WORLD_SIZE"):
                os.environ.pop(k, None)
            run_rank(cfg_dict, str(run_dir), stages_fn, lock)
        else:
            spawn_ranks(_spawn_entry, nproc, (nproc, free_port(), cfg_dict, str(run_dir), stages_fn, lock), run_dir)
    finally:
        if lock is not None:
            rundir.release_lock(run_dir, lock)
