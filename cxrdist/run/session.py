"""One rank's session: logging, process group, the run dir's lock and attempt, tracker; then the method's stages.

``run_rank(cfg_dict, run_dir)`` is what each process calls, whoever started it (local spawn ``run/local.py``,
torchrun ``run/torchrun.py``, submitit ``run/job.py``); every rank's uncaught error goes to its log.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cxrdist import dist, wandb_run
from cxrdist.config import from_container
from cxrdist.engine.pipeline import run_stages
from cxrdist.engine.stages import StageContext
from cxrdist.log import build_tracker, close_log_files, setup_logging
from cxrdist.methods import get_method
from cxrdist.run import rundir
from cxrdist.run.prepare import warn_source_pixels
from cxrdist.run.sigterm import SIGTERM_HOOKS

logger = logging.getLogger(__name__)


def method_stages(cfg) -> list:
    """The configured method's stages (the default ``stages_fn``)."""
    return get_method(cfg.method.name)(cfg).stages()


@contextlib.contextmanager
def _errors_to_log(run_dir: str, env, box: dict[str, int]):
    """Every uncaught error of this rank goes to its log (with traceback) and to ``RUN/logs/errors/``.

    Rank 0, failing in a collective because a peer went away, waits briefly for that peer's own error and
    raises it (RankFailedError naming the rank), so its console and ``--wait`` show the real cause first.
    """
    try:
        yield
    except Exception as e:
        record = rundir.record_error(run_dir, box["attempt"], env.rank, e)
        first = None
        if env.is_main and env.world_size > 1 and record["peer_hangup"]:
            first = rundir.wait_first_failure(run_dir, box["attempt"], not_rank=env.rank, timeout_s=30.0)
        if first is None:
            logger.error("rank %d failed: %s: %s", env.rank, type(e).__name__, record["message"], exc_info=e)
            raise
        line = rundir.failure_line(first, run_dir)
        logger.error("%s; rank 0 stopped because of it (%s)", line, type(e).__name__, exc_info=e)
        raise rundir.RankFailedError(line) from e


def _begin_attempt(run_dir: str, env, lock: str | None, role: str) -> int:
    """Rank 0 takes the run dir's lock (a requeue of the same job passes) and counts the attempt; all get it."""
    result: tuple[int, str | None] = (0, None)
    if env.is_main:
        try:
            if lock is not None:
                rundir.acquire_lock(run_dir, lock, slurm_job_id=os.environ.get("SLURM_JOB_ID"), role=role)
            result = (rundir.begin_attempt(run_dir, token=lock, role=role, world_size=env.world_size), None)
        except rundir.RunDirBusy as e:
            result = (0, str(e))
    attempt, error = dist.broadcast_object(result)
    if error is not None:
        raise rundir.RunDirBusy(error)
    logger.info("attempt %d (%s, world size %d)", attempt, role, env.world_size)
    return attempt


@contextlib.contextmanager
def rank_session(
    cfg_dict: dict[str, Any],
    run_dir: str,
    tracker_config: dict[str, Any] | None = None,
    lock: str | None = None,
    role: str = "a training job",
):
    """Logging, process group, run-dir lock, attempt and tracker of one rank, torn down on exit; yields the
    StageContext. Uncaught errors are logged and recorded (see :func:`_errors_to_log`)."""
    env = dist.from_environment()
    setup_logging(run_dir, env.rank)
    torch.set_num_threads(dist.cpu_threads(env))
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # loader workers inherit it
    box, tracker, ended, end = {"attempt": 0}, None, False, ("preempted", None)
    try:
        with _errors_to_log(run_dir, env, box):  # (records the error before the teardown below hangs up peers)
            cfg = from_container(cfg_dict)
            if cfg.engine.deterministic:
                torch.use_deterministic_algorithms(True)
            os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
            dist.init(env)
            box["attempt"] = _begin_attempt(run_dir, env, lock, role)
            tracker = build_tracker(
                cfg.logger.backend,
                Path(run_dir),
                is_main=env.is_main,
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                group=cfg.method.name,
                config=tracker_config,
                attempt=box["attempt"],
                tags=wandb_run.run_tags(cfg_dict, env.world_size),
                job_type=wandb_run.job_type(role),
            )
            SIGTERM_HOOKS.append(tracker.preempting)
            yield StageContext(cfg=cfg, run_dir=Path(run_dir), env=env, tracker=tracker)
        ended, end = True, ("finished", None)
    except Exception as e:
        ended = True  # failed: this job is over (a requeue's SystemExit keeps the lock for the next attempt)
        end = ("failed", f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
        raise
    finally:
        if tracker is not None:
            SIGTERM_HOOKS[:] = [h for h in SIGTERM_HOOKS if h != tracker.preempting]
            tracker.finish(*end)  # a SystemExit/KeyboardInterrupt (requeue, cancel) ends it as preempted
        if ended and env.is_main and lock is not None:
            rundir.release_lock(run_dir, lock)
        dist.shutdown()
        close_log_files()


def run_rank(
    cfg_dict: dict[str, Any], run_dir: str, stages_fn: Callable | None = None, lock: str | None = None
) -> dict[str, Any]:
    """Run the method's stages (or ``stages_fn(cfg)``'s) on this process; called on every rank."""
    with rank_session(cfg_dict, run_dir, tracker_config=cfg_dict, lock=lock) as ctx:
        if ctx.env.is_main:
            warn_source_pixels(ctx.cfg)  # again, into the run log
        records = run_stages(ctx, (stages_fn or method_stages)(ctx.cfg))
    return {"rank": ctx.env.rank, "stages": list(records), "wandb_id": ctx.tracker.run_id}
