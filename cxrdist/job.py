"""The job every launcher runs: prepare a run dir, then on each rank run the method's stages.

``prepare_run(cfg)`` (once, before any process starts) creates the run dir, pins the shards' writer config
hash into the config and saves it as ``RUN/config.yaml``; a run dir whose saved config differs is refused
with the differences unless ``force``. ``run_rank(cfg_dict, run_dir)`` is what each process calls (local
spawn, torchrun, Slurm/submitit): logging, process group, tracker, stages. ``Job`` is the submitit callable:
``checkpoint()`` only resubmits itself (state lives on disk), so a requeued job resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class RunDirError(ValueError):
    """A run dir that cannot be used for this config."""


def prepare_run(cfg, force: bool = False) -> Path:
    """Create/check the run dir and save the resolved config; return the run dir."""
    from cxrdist.config import diff_configs, load_config, save_config, to_container
    from cxrdist.data.format import read_json
    from cxrdist.preflight import check_run_config

    check_run_config(cfg)  # method options, shards, ImageNet weights: before anything is written
    shards = Path(cfg.data.root)
    if cfg.data.expected_config_hash is None:
        cfg.data.expected_config_hash = read_json(shards / "_dataset.json")["config_hash"]
    run_dir = Path(cfg.run_dir)
    saved = run_dir / "config.yaml"
    if saved.is_file():
        old = to_container(load_config(saved))
        if old["method"]["name"] != cfg.method.name and not force:
            raise RunDirError(
                f"{run_dir} belongs to method {old['method']['name']!r}, not {cfg.method.name!r}; "
                "choose another run_dir"
            )
        changes = [d for d in diff_configs(old, to_container(cfg)) if not d.startswith(("cluster.", "logger."))]
        if changes and not force:
            raise RunDirError(
                f"{run_dir} was started with another config (differences: {'; '.join(changes)}); "
                "use a new run_dir, or --force to discard it and start over"
            )
        if changes and force:
            logger.warning("--force: discarding %s (stages and checkpoints)", run_dir)
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)
    return run_dir


def method_stages(cfg) -> list:
    """The configured method's stages (the default ``stages_fn``)."""
    from cxrdist.methods import get_method

    return get_method(cfg.method.name)(cfg).stages()


@contextlib.contextmanager
def rank_session(cfg_dict: dict[str, Any], run_dir: str, tracker_config: dict[str, Any] | None = None):
    """Logging, process group and tracker of one rank, torn down on exit; yields the StageContext."""
    import torch

    from cxrdist import dist
    from cxrdist.config import from_container
    from cxrdist.engine.stages import StageContext
    from cxrdist.log import build_tracker, close_log_files, setup_logging

    env = dist.from_environment()
    setup_logging(run_dir, env.rank)
    torch.set_num_threads(dist.cpu_threads(env))
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # loader workers inherit it
    cfg = from_container(cfg_dict)
    if cfg.engine.deterministic:
        torch.use_deterministic_algorithms(True)
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    dist.init(env)
    tracker = build_tracker(
        cfg.logger.backend,
        Path(run_dir),
        is_main=env.is_main,
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.method.name,
        config=tracker_config,
    )
    try:
        yield StageContext(cfg=cfg, run_dir=Path(run_dir), env=env, tracker=tracker)
    finally:
        tracker.finish()
        dist.shutdown()
        close_log_files()


def run_rank(cfg_dict: dict[str, Any], run_dir: str, stages_fn: Callable | None = None) -> dict[str, Any]:
    """Run the method's stages (or ``stages_fn(cfg)``'s) on this process; called on every rank."""
    from cxrdist.engine.pipeline import run_stages

    with rank_session(cfg_dict, run_dir, tracker_config=cfg_dict) as ctx:
        records = run_stages(ctx, (stages_fn or method_stages)(ctx.cfg))
    return {"rank": ctx.env.rank, "stages": list(records), "wandb_id": ctx.tracker.run_id}


def _local_rank_env(rank: int, world: int, port: int) -> None:
    """The torchrun-style variables of local rank ``rank`` (one machine, loopback rendezvous)."""
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "CXRDIST_DIST_SOURCE": "local",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
    )


def _spawn_entry(
    rank: int, world: int, port: int, cfg_dict: dict[str, Any], run_dir: str, stages_fn: Callable | None
) -> None:
    _local_rank_env(rank, world, port)
    run_rank(cfg_dict, run_dir, stages_fn)


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_local_gpus(nproc: int) -> None:
    """With CUDA, ``nproc`` local ranks need as many visible GPUs: NCCL refuses two ranks on one GPU
    ("Duplicate GPU detected", seen on a 1-GPU H100 machine with nproc 2). Slurm jobs are matched by the launcher
    (tasks per node = GPUs per node), and a per-task GPU binding there is valid, so the check lives here."""
    import torch

    from cxrdist.cli import UsageError

    if nproc < 1:
        raise UsageError(f"--nproc must be ≥ 1, got {nproc}")
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise UsageError(
            f"{nproc} ranks on this node but {torch.cuda.device_count()} visible GPU(s): NCCL needs one GPU per "
            f"rank; start at most {torch.cuda.device_count()} (--nproc)"
        )


def run_local(cfg, nproc: int = 1, force: bool = False, stages_fn: Callable | None = None) -> Path:
    """Run a method on this machine with ``nproc`` processes (gloo on CPU); returns the run dir."""
    check_local_gpus(nproc)
    run_dir = prepare_run(cfg, force=force)
    run_prepared(cfg, run_dir, nproc, stages_fn)
    return run_dir


def run_prepared(cfg, run_dir: Path, nproc: int = 1, stages_fn: Callable | None = None) -> None:
    """Start ``nproc`` local ranks on a run dir that :func:`prepare_run` made (``launch/local.py``'s second half)."""
    import torch.multiprocessing as mp

    from cxrdist.config import to_container

    cfg_dict = to_container(cfg)
    if nproc == 1:
        for k in ("RANK", "WORLD_SIZE"):
            os.environ.pop(k, None)
        run_rank(cfg_dict, str(run_dir), stages_fn)
    else:
        mp.start_processes(
            _spawn_entry,
            args=(nproc, free_port(), cfg_dict, str(run_dir), stages_fn),
            nprocs=nproc,
            join=True,
            start_method="spawn",
        )


def own_address() -> str:
    """This node's first address (``hostname -I``), or 127.0.0.1 when it has none."""
    import subprocess

    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10, check=True).stdout
        return out.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "127.0.0.1"


def rendezvous_address(run_dir: Path, attempt: str, is_main: bool, timeout_s: float = 600.0) -> str:
    """The master address, passed through the shared run dir: node names need not resolve.

    Global rank 0 writes its own address to ``RUN/.rendezvous/<attempt>``; the others wait for the file.
    ``attempt`` includes the requeue count, so a requeued job never reads its previous life's address.
    """

    path = run_dir / ".rendezvous" / attempt
    if is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{attempt}.tmp")
        tmp.write_text(own_address())
        os.replace(tmp, path)
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: rank 0 did not publish its address within {timeout_s:.0f} s")
        time.sleep(0.5)
    return path.read_text().strip()


def hold_on_sigterm(max_wait_s: float = 900.0) -> None:
    """Under Slurm, make SIGTERM freeze this process until Slurm's SIGKILL (or ``max_wait_s``, then exit 143).

    SIGTERM means Slurm is ending this attempt (``scontrol requeue``, ``scancel``, preemption) and SIGKILL
    follows after KillWait. submitit only logs SIGTERM and lets the job go on; a job that then failed (e.g.
    W&B's service process, killed by the same signal) or finished would write a result that submitit's
    watcher takes for the job's outcome while Slurm requeues it. Checkpoints are complete-only and already
    on disk, so stopping anywhere loses at most the steps since the last one. submitit's USR2 handler
    (timeout/preemption requeue) still runs while we wait.
    """

    def _hold(signum: int, frame: Any) -> None:
        logger.warning(
            "SIGTERM: Slurm is ending this attempt (requeue/cancel/preemption); stopping here and waiting "
            "for the kill. The next attempt resumes from the last checkpoint."
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        deadline = time.monotonic() + max_wait_s
        while time.monotonic() < deadline:
            time.sleep(0.5)
        os._exit(128 + signum)  # no cleanup: nothing may write a result for this attempt

    signal.signal(signal.SIGTERM, _hold)


_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class Job:
    """The submitit callable shared by every kind of job (training, evaluation, sharding)."""

    def __init__(self, cfg_dict: dict[str, Any], run_dir: str):
        self.cfg_dict, self.run_dir = cfg_dict, run_dir

    def __call__(self) -> dict[str, Any]:
        import submitit

        from cxrdist.dist import port_from_job_id

        job_env = submitit.JobEnvironment()
        # export() refuses to overwrite; a debug (in-process) job may inherit a previous run's variables.
        saved = {k: os.environ.pop(k) for k in _DIST_VARS if k in os.environ}
        try:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            attempt = f"{job_env.job_id}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"
            os.environ["MASTER_ADDR"] = rendezvous_address(Path(self.run_dir), attempt, job_env.global_rank == 0)
            os.environ["MASTER_PORT"] = str(port_from_job_id(job_env.job_id))
            os.environ["CXRDIST_DIST_SOURCE"] = "submitit"
            if job_env.cluster == "slurm":
                hold_on_sigterm()
            return run_rank(self.cfg_dict, self.run_dir)
        finally:
            for k in _DIST_VARS:
                os.environ.pop(k, None)
            os.environ.update(saved)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """On timeout/preemption: resubmit the same job; no collective work here (checkpoints are on disk)."""
        import submitit

        return submitit.helpers.DelayedSubmission(type(self)(self.cfg_dict, self.run_dir))


def _evaluate_rank(run_dir: str, splits: list[str], stage: str | None) -> None:
    """One rank of launch/evaluate.py: the method's final EvalStage with another checkpoint and splits."""
    import dataclasses

    from cxrdist.config import load_config, to_container
    from cxrdist.engine.pipeline import stage_dirs
    from cxrdist.engine.stages import EvalStage
    from cxrdist.eval.evaluate import evaluate_model

    cfg = load_config(Path(run_dir) / "config.yaml")
    cfg.eval.splits = splits
    with rank_session(to_container(cfg), run_dir) as ctx:
        stages = method_stages(ctx.cfg)
        ctx.stage_dirs = stage_dirs(Path(run_dir), stages)
        final = next((s for s in reversed(stages) if isinstance(s, EvalStage)), None)
        if final is None:
            raise ValueError(f"method {cfg.method.name} has no evaluation stage")
        if stage is not None:
            if stage not in ctx.stage_dirs:
                raise ValueError(f"no stage {stage!r} in method {cfg.method.name} (stages: {list(ctx.stage_dirs)})")
            weights = ctx.stage_dirs[stage] / "best.pt"
            final = dataclasses.replace(final, weights=lambda c: weights)
        evaluate_model(ctx, final, out_root=Path(run_dir) / "eval")


def _spawn_eval(rank: int, world: int, port: int, run_dir: str, splits: list[str], stage: str | None) -> None:
    _local_rank_env(rank, world, port)
    _evaluate_rank(run_dir, splits, stage)


def evaluate_run(run_dir: Path, splits: list[str], stage: str | None = None, nproc: int = 1) -> Path:
    """Evaluate a run's best model (of ``stage``, default: the final eval stage's) into ``RUN/eval/<split>``."""
    import torch.multiprocessing as mp

    from cxrdist.preflight import check_eval_request

    check_eval_request(Path(run_dir), splits, stage, nproc)  # before any process, W&B run or output exists
    if nproc == 1:
        _evaluate_rank(str(run_dir), splits, stage)
    else:
        mp.start_processes(
            _spawn_eval,
            args=(nproc, free_port(), str(run_dir), splits, stage),
            nprocs=nproc,
            join=True,
            start_method="spawn",
        )
    return Path(run_dir) / "eval"
