"""The job every launcher runs: prepare a run dir (prepare.py), then on each rank run the method's stages.

``run_rank(cfg_dict, run_dir)`` is what each process calls (local spawn, torchrun, Slurm/submitit): logging,
process group, the run dir's lock and attempt (rundir.py), tracker, stages; every rank's uncaught error goes
to its log. ``Job`` is the submitit callable: ``checkpoint()`` only resubmits itself (state lives on disk),
so a requeued job resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxrdist import rundir, wandb_run
from cxrdist.prepare import prepare_run, warn_source_pixels

logger = logging.getLogger(__name__)


def method_stages(cfg) -> list:
    """The configured method's stages (the default ``stages_fn``)."""
    from cxrdist.methods import get_method

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
    from cxrdist import dist

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
    import torch

    from cxrdist import dist
    from cxrdist.config import from_container
    from cxrdist.engine.stages import StageContext
    from cxrdist.log import build_tracker, close_log_files, setup_logging

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
    from cxrdist.engine.pipeline import run_stages

    with rank_session(cfg_dict, run_dir, tracker_config=cfg_dict, lock=lock) as ctx:
        if ctx.env.is_main:
            warn_source_pixels(ctx.cfg)  # again, into the run log
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
    rank: int,
    world: int,
    port: int,
    cfg_dict: dict[str, Any],
    run_dir: str,
    stages_fn: Callable | None,
    lock: str | None = None,
) -> None:
    _local_rank_env(rank, world, port)
    run_rank(cfg_dict, run_dir, stages_fn, lock)


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


def spawn_ranks(fn: Callable, nproc: int, args: tuple, run_dir: Path) -> None:
    """Start ``nproc`` local ranks of ``fn(rank, *args)``; a failure is raised as the first failing rank's error."""
    import torch.multiprocessing as mp

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
    from cxrdist.config import to_container

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


def _announce_sigterm(reader: socket.socket, announce: Callable[[], None]) -> None:
    """Thread: log the SIGTERM line as soon as the signal's wakeup byte arrives, whatever the main thread does."""
    while True:
        data = reader.recv(64)
        if not data:
            return
        if signal.SIGTERM in data:
            announce()


def hold_on_sigterm(max_wait_s: float = 900.0) -> None:
    """Under Slurm, make SIGTERM freeze this process until Slurm's SIGKILL (or ``max_wait_s``, then exit 143).

    SIGTERM means Slurm is ending this attempt (``scontrol requeue``, ``scancel``, preemption) and SIGKILL
    follows after KillWait. submitit only logs SIGTERM and lets the job go on; a job that then failed (e.g.
    W&B's service process, killed by the same signal) or finished would write a result that submitit's
    watcher takes for the job's outcome while Slurm requeues it. Checkpoints are complete-only and already
    on disk, so stopping anywhere loses at most the steps since the last one. submitit's USR2 handler
    (timeout/preemption requeue) still runs while we wait. The SIGTERM line is logged by a thread woken through
    the signal's wakeup fd: a Python handler runs only once the main thread is back in Python, and one blocked
    in a collective whose peer is frozen by the same SIGTERM never is (the line was missing in 1 of 4 requeues).
    """
    announced = threading.Lock()

    def announce() -> None:
        if announced.acquire(blocking=False):
            logger.warning(
                "SIGTERM: Slurm is ending this attempt (requeue/cancel/preemption); stopping here and waiting "
                "for the kill. The next attempt resumes from the last checkpoint."
            )
            for handler in logging.getLogger().handlers:
                handler.flush()
            for hook in list(SIGTERM_HOOKS):  # the tracker marks its run preempted (best effort)
                try:
                    hook()
                except Exception as e:  # the SIGTERM line and the hold matter more than the hook
                    logger.warning("SIGTERM hook %s failed: %s", hook, e)

    def _hold(signum: int, frame: Any) -> None:
        announce()
        deadline = time.monotonic() + max_wait_s
        while time.monotonic() < deadline:
            time.sleep(0.5)
        os._exit(128 + signum)  # no cleanup: nothing may write a result for this attempt

    signal.signal(signal.SIGTERM, _hold)
    try:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError):  # not the main thread: the handler alone logs the line
        return
    _SIGTERM_SOCKETS.extend((reader, writer))  # kept open for the life of the process
    threading.Thread(target=_announce_sigterm, args=(reader, announce), daemon=True, name="sigterm-log").start()


_SIGTERM_SOCKETS: list[socket.socket] = []
SIGTERM_HOOKS: list[Callable[[], None]] = []  # called once when SIGTERM arrives (rank_session adds the tracker's)
_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class Job:
    """The submitit callable shared by every kind of job (training, evaluation, sharding)."""

    def __init__(self, cfg_dict: dict[str, Any], run_dir: str, lock: str | None = None):
        self.cfg_dict, self.run_dir, self.lock = cfg_dict, run_dir, lock

    def __call__(self) -> dict[str, Any]:
        import submitit

        from cxrdist.dist import port_from_job_id
        from cxrdist.log import setup_logging

        job_env = submitit.JobEnvironment()
        # export() refuses to overwrite; a debug (in-process) job may inherit a previous run's variables.
        saved = {k: os.environ.pop(k) for k in _DIST_VARS if k in os.environ}
        try:
            if job_env.cluster == "slurm":
                hold_on_sigterm()
            setup_logging(self.run_dir, job_env.global_rank)  # an error before the session also reaches the log
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            attempt = f"{job_env.job_id}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"
            try:
                addr = rendezvous_address(Path(self.run_dir), attempt, job_env.global_rank == 0)
            except Exception:
                logger.exception("rank %d: no rendezvous", job_env.global_rank)
                raise
            os.environ["MASTER_ADDR"] = addr
            os.environ["MASTER_PORT"] = str(port_from_job_id(job_env.job_id))
            os.environ["CXRDIST_DIST_SOURCE"] = "submitit"
            return run_rank(self.cfg_dict, self.run_dir, lock=self.lock)
        finally:
            for k in _DIST_VARS:
                os.environ.pop(k, None)
            os.environ.update(saved)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """On timeout/preemption: resubmit the same job; no collective work here (checkpoints are on disk)."""
        import submitit

        return submitit.helpers.DelayedSubmission(type(self)(self.cfg_dict, self.run_dir, self.lock))


def external_eval_dir(run_dir: Path, shards: str | Path) -> Path:
    """Where ``launch/evaluate.py RUN --shards S`` writes: ``RUN/eval/external/<S's dataset>``."""
    header = json.loads((Path(shards) / "_dataset.json").read_text())
    return Path(run_dir) / "eval" / "external" / header.get("dataset", "nih")


def _evaluate_rank(
    run_dir: str, splits: list[str], stage: str | None, lock: str | None = None, shards: str | None = None
) -> None:
    """One rank of launch/evaluate.py: the method's final EvalStage with another checkpoint and splits (and, with
    ``shards``, another shard root: an external set, whose writer hash the run does not pin)."""
    import dataclasses

    from cxrdist.config import load_config, to_container
    from cxrdist.engine.pipeline import stage_dirs
    from cxrdist.engine.stages import EvalStage
    from cxrdist.eval.evaluate import evaluate_model

    cfg = load_config(Path(run_dir) / "config.yaml")
    cfg.eval.splits = splits
    out_root = Path(run_dir) / "eval"
    if shards is not None:
        cfg.data.root, cfg.data.expected_config_hash = str(shards), None
        out_root = external_eval_dir(Path(run_dir), shards)
    with rank_session(to_container(cfg), run_dir, lock=lock, role="an evaluation") as ctx:
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
        evaluate_model(ctx, final, out_root=out_root)


def _spawn_eval(
    rank: int,
    world: int,
    port: int,
    run_dir: str,
    splits: list[str],
    stage: str | None,
    lock: str | None,
    shards: str | None = None,
) -> None:
    _local_rank_env(rank, world, port)
    _evaluate_rank(run_dir, splits, stage, lock, shards)


def evaluate_run(
    run_dir: Path, splits: list[str], stage: str | None = None, nproc: int = 1, shards: str | Path | None = None
) -> Path:
    """Evaluate a run's best model (of ``stage``, default: the final eval stage's) into ``RUN/eval/<split>``, or
    with ``shards`` (an external shard root) into ``RUN/eval/external/<dataset>/<split>``.

    Holds the run dir's lock while it runs: a run dir that a job is training is refused.
    """
    from cxrdist.preflight import check_eval_request

    shards = None if shards is None else str(shards)
    check_eval_request(Path(run_dir), splits, stage, nproc, shards)  # before any process, W&B run or output exists
    lock = rundir.new_token()
    rundir.acquire_lock(run_dir, lock, role="an evaluation")
    try:
        if nproc == 1:
            _evaluate_rank(str(run_dir), splits, stage, lock, shards)
        else:
            args = (nproc, free_port(), str(run_dir), splits, stage, lock, shards)
            spawn_ranks(_spawn_eval, nproc, args, Path(run_dir))
    finally:
        rundir.release_lock(run_dir, lock)
    return Path(run_dir) / "eval" if shards is None else external_eval_dir(Path(run_dir), shards)
