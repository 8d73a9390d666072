"""``launch/submit.py``: resolve and check the config, prepare the run dir, submit the Job with submitit.

Clusters: ``slurm`` (sbatch through submitit; one task per GPU, or ``--tasks-per-node`` on CPU nodes),
``local`` (submitit's local executor: processes on this machine) and ``debug`` (in this process). The run
dir is a name (``runs/<name>``), created and filled with ``config.yaml`` before anything is submitted, so a
resubmission — or a requeue — finds it and resumes; a different config is refused with a diff.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit
import torch
from omegaconf import OmegaConf

from cxrdist import cli
from cxrdist.cli import UsageError
from cxrdist.config import compose, to_container, validate_config
from cxrdist.log import wandb_environment
from cxrdist.methods import get_method
from cxrdist.progress import follow
from cxrdist.run import rundir
from cxrdist.run.job import Job
from cxrdist.run.preflight import check_shard_root
from cxrdist.run.prepare import prepare_run

logger = logging.getLogger(__name__)
CLUSTERS = ("slurm", "local", "debug")


class LaunchError(UsageError):
    """A launch that must not go ahead (nothing was submitted)."""


def parser(prog: str = "submit.py") -> argparse.ArgumentParser:
    """Launcher flags; every other argument is a Hydra override."""
    p = cli.parser(prog, "Submit a cxrdist run: launcher flags first, then Hydra overrides (key=value).")
    p.add_argument("--nodes", type=int, default=1, help="nodes")
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node: one task per GPU")
    p.add_argument("--tasks-per-node", type=int, default=None, help="tasks per node when there are no GPUs (1)")
    p.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per task (the cluster's default)")
    p.add_argument("--mem-gb", type=int, default=None, help="memory per node in GB (the cluster's default)")
    p.add_argument("--partition", help="Slurm partition (default: cluster.partition)")
    p.add_argument("--account", help="Slurm account (default: cluster.account)")
    p.add_argument("--qos", help="Slurm QOS (default: cluster.qos)")
    p.add_argument("--constraint", help="Slurm constraint (default: cluster.constraint)")
    p.add_argument("--timeout-min", type=int, default=None, help="time limit per attempt (cluster.timeout_min)")
    p.add_argument("--max-requeues", type=int, default=None, help="requeues after a timeout (cluster.max_requeues)")
    p.add_argument("--cluster", default="slurm", help=f"one of {', '.join(CLUSTERS)}")
    p.add_argument("--name", help="run name (default: the method's name); run dir = runs/<name>")
    p.add_argument("--run-dir", type=Path, help="explicit run dir (overrides --name)")
    p.add_argument("--force", action="store_true", help="discard a run dir started with another config")
    p.add_argument("--dry-run", action="store_true", help="print the job script and config; submit nothing")
    p.add_argument("-m", "--multirun", action="store_true",
                   help="sweep: every combination of key=a,b overrides as ONE job array")  # fmt: skip
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for the job, showing rank 0's progress (always with --cluster local/debug)",
    )
    return p


def check_args(args: argparse.Namespace) -> int:
    """Validate launcher flags; return tasks per node. ``0`` is a value (an error where it makes no sense)."""
    if args.cluster not in CLUSTERS:
        raise LaunchError(f"unknown cluster {args.cluster!r}; choose one of {', '.join(CLUSTERS)}")
    cli.check_positive(nodes=args.nodes, tasks_per_node=args.tasks_per_node, cpus_per_task=args.cpus_per_task,
                       mem_gb=args.mem_gb, timeout_min=args.timeout_min)  # fmt: skip
    if args.gpus_per_node < 0:
        raise LaunchError(f"--gpus-per-node must be ≥ 0, got {args.gpus_per_node}")
    if args.max_requeues is not None and args.max_requeues < 0:
        raise LaunchError(f"--max-requeues must be ≥ 0, got {args.max_requeues}")
    if args.gpus_per_node and args.tasks_per_node and args.tasks_per_node != args.gpus_per_node:
        raise LaunchError("with GPUs there is one task per GPU: drop --tasks-per-node or make it equal")
    if args.cluster in ("local", "debug"):
        if args.nodes != 1:
            raise LaunchError(f"--cluster {args.cluster} runs on this machine: --nodes must be 1")
        if args.gpus_per_node:
            have = torch.cuda.device_count()
            if args.gpus_per_node > have:
                raise LaunchError(f"--gpus-per-node {args.gpus_per_node} asked of this machine, which has {have}")
    if args.cluster == "debug" and (args.tasks_per_node or 1) > 1:
        raise LaunchError("--cluster debug runs one task in this process: use --cluster local for several")
    return args.gpus_per_node or args.tasks_per_node or 1


def check_slurm() -> None:
    """Fail clearly if no Slurm controller answers."""
    if shutil.which("sbatch") is None:
        raise LaunchError("--cluster slurm: sbatch not found on PATH (use --cluster local on this machine)")
    try:
        subprocess.run(["sinfo", "-h", "-o", "%P"], check=True, capture_output=True, text=True, timeout=30)
    except (subprocess.SubprocessError, OSError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise LaunchError(
            f"Slurm is unreachable (sinfo failed: {detail.strip()[:300]}); check SLURM_CONF or "
            "start a local cluster with tests/slurm/local-cluster.sh up"
        ) from None


_LIVE_STATES = rundir.SLURM_LIVE_STATES


def slurm_job_live(job_id: str) -> bool:
    """Whether Slurm still lists ``job_id`` in a state from which it will run (again)."""
    try:
        cmd = ["squeue", "-h", "-j", str(job_id), "-o", "%T"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (subprocess.SubprocessError, OSError):
        return False
    return any(state.strip() in _LIVE_STATES for state in out.stdout.splitlines())


def wait_results(job: Any, poll_s: float = 5.0) -> list[Any]:
    """``job.results()`` that survives a requeue (``scontrol requeue``, preemption, node failure).

    Between the kill of one attempt and the start of the next, sacct shows the killed attempt, so submitit's
    watcher takes the job for finished and raises ``UncompletedJobError`` (no result file). While Slurm still
    lists the job as pending/running, wait and ask again; any other failure is raised as is.
    """
    while True:
        try:
            return job.results()
        except submitit.core.utils.UncompletedJobError:
            if not (isinstance(job, submitit.SlurmJob) and slurm_job_live(job.job_id)):
                raise
            logger.info("job %s was requeued; waiting for its next attempt", job.job_id)
            time.sleep(poll_s)


def failure_summary(run_dir: str | Path, error: BaseException, since: float = 0.0) -> str:
    """One line for a failed job: the rank that failed first (in errors recorded after ``since``), else ``error``."""
    first = rundir.first_failure(run_dir, since=since)
    if first is not None:
        return rundir.failure_line(first, run_dir)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"


def _given(flag: Any, default: Any) -> Any:
    """The flag's value when it was given (``0`` and ``""`` included), else the config's."""
    return default if flag is None else flag


def build_executor(args: argparse.Namespace, folder: Path, tasks: int, cfg, preview: bool = False) -> Any:
    """A submitit executor for the cluster, with the job's resources (``preview``: for a dry run, see below)."""
    timeout = _given(args.timeout_min, cfg.cluster.timeout_min)
    if args.cluster == "debug":
        return submitit.DebugExecutor(folder=folder)
    if args.cluster == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(
            timeout_min=timeout,
            tasks_per_node=tasks,
            gpus_per_node=args.gpus_per_node or 0,
            signal_delay_s=cfg.cluster.signal_delay_s,
        )
        return ex
    executor = _preview_executor_class() if preview else submitit.SlurmExecutor
    ex = executor(folder=folder, max_num_timeout=_given(args.max_requeues, cfg.cluster.max_requeues))
    params: dict[str, Any] = {
        "nodes": args.nodes,
        "ntasks_per_node": tasks,
        "time": timeout,
        "job_name": f"cxrdist-{cfg.method.name}",
        "signal_delay_s": cfg.cluster.signal_delay_s,
        "partition": _given(args.partition, cfg.cluster.partition),
        "account": _given(args.account, cfg.cluster.account),
        "qos": _given(args.qos, cfg.cluster.qos),
        "constraint": _given(args.constraint, cfg.cluster.constraint),
        "cpus_per_task": args.cpus_per_task,
        "mem": f"{args.mem_gb}GB" if args.mem_gb else None,
        "gpus_per_node": args.gpus_per_node or None,
        "additional_parameters": {"requeue": True},
    }
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def _preview_executor_class() -> type:
    """A SlurmExecutor for dry runs: the same parameters and job script, without the constructor's srun probe.

    ``SlurmExecutor.__init__`` raises 'Could not detect "srun"' where Slurm is not installed (it asks the
    ``affinity()`` classmethod, which AutoExecutor also uses to pick a cluster). A dry run only renders the script
    (``_make_submission_file_text``), so this subclass answers the probe; it is never used to submit.
    """

    class PreviewSlurmExecutor(submitit.SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            return 1

        def _internal_process_submissions(self, delayed_submissions: list) -> list:
            raise RuntimeError("a dry-run executor never submits")

    return PreviewSlurmExecutor


def job_script(executor: Any) -> str:
    """The text submitit would submit (sbatch script on Slurm)."""
    if isinstance(executor, submitit.SlurmExecutor):
        # submitit has no public dry run; this is the exact text its submit() writes to the .sh file.
        return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")
    return f"# {type(executor).__name__}: {getattr(executor, 'parameters', {})}\n"


def resolve(argv: list[str]) -> tuple[argparse.Namespace, Any, int]:
    """Parse flags and overrides; compose and validate the config; fix the run dir."""
    p = parser()
    args, extra = p.parse_known_args(argv)
    overrides = cli.check_overrides(extra, p)
    tasks = check_args(args)
    cluster_cfg = "slurm" if args.cluster == "slurm" else "local"
    cfg = compose([f"cluster={cluster_cfg}", *overrides])
    if cfg.cluster.timeout_min < 1 or cfg.cluster.max_requeues < 0:
        raise LaunchError(
            f"cluster.timeout_min must be ≥ 1 and cluster.max_requeues ≥ 0, got {cfg.cluster.timeout_min} and "
            f"{cfg.cluster.max_requeues}"
        )
    run_dir = args.run_dir or Path("runs") / (args.name or cfg.method.name)
    cfg.run_dir = str(run_dir.resolve())
    validate_config(cfg)

    get_method(cfg.method.name)(cfg)
    return args, cfg, tasks


def submit(argv: list[str]) -> dict[str, Any]:
    """What ``launch/submit.py`` does; returns what it printed as a dict (for tests)."""
    args, cfg, tasks = resolve(argv)
    if args.dry_run:
        ex = build_executor(args, Path(cfg.run_dir) / "submitit", tasks, cfg, preview=True)
        return {
            "script": job_script(ex),
            "config": OmegaConf.to_yaml(cfg),
            "run_dir": cfg.run_dir,
            "tasks": tasks,
            "notes": dry_run_notes(cfg),
        }
    if args.cluster == "slurm":
        check_slurm()
    submitted = time.time()
    lock = rundir.new_token()  # the job's: its requeues pass, any other submission is refused while it lives
    run_dir = prepare_run(cfg, force=args.force, lock=lock, role="a submission")
    try:
        ex = build_executor(args, run_dir / "submitit", tasks, cfg)
        job = ex.submit(Job(to_container(cfg), str(run_dir), lock))
    except BaseException:
        rundir.release_lock(run_dir, lock)
        raise
    if args.cluster == "slurm":
        rundir.update_lock(run_dir, lock, slurm_job_id=str(job.job_id), role=f"Slurm job {job.job_id}")
    elif args.cluster == "local":  # the job id is the pid of submitit's controller process on this host
        rundir.update_lock(run_dir, lock, pid=int(job.job_id), role=f"local job {job.job_id}")
    where = "none" if cfg.logger.backend == "none" else wandb_environment(run_dir)["WANDB_DIR"]
    return {
        "job_id": job.job_id,
        "job": job,
        "run_dir": str(run_dir),
        "submitted": submitted,
        "wandb": where,
        "tasks": tasks,
        "wait": args.wait or args.cluster in ("debug", "local"),
        "follows": args.cluster != "debug",  # a debug job logs to this console itself
        "follow": [f"tail -f {run_dir}/logs/rank0.log", f"squeue -j {job.job_id}", f"sacct -j {job.job_id}"]
        if args.cluster == "slurm"
        else [f"tail -f {run_dir}/logs/rank0.log"],
    }


def dry_run_notes(cfg) -> list[str]:
    """What a real submission would refuse that a dry run does not check (the shards, here or on the cluster)."""
    try:
        check_shard_root(cfg.data.root)
    except UsageError as e:
        return [f"not checked by --dry-run, refused at submission unless fixed: {cli.one_line(e)}"]
    return []


def show_submission(out: dict[str, Any]) -> int:
    """Print what :func:`submit` returned (a preview, or the job and where to follow it); with ``--wait`` or
    ``--cluster local`` follow the job to its end. Returns the launcher's exit status (1: the job failed)."""
    if "script" in out:
        print(f"# --- job script ({out['tasks']} task(s) per node) ---\n{out['script']}")
        print(f"# --- resolved config (run dir {out['run_dir']}) ---\n{out['config']}")
        for note in out["notes"]:
            print(f"# note: {note}")
        return 0
    print(f"submitted job {out['job_id']} ({out['tasks']} task(s) per node)")
    print(f"run dir: {out['run_dir']}")
    print(f"W&B:     {out['wandb']}")
    print("follow:  " + "\n         ".join(out["follow"]), flush=True)
    if not out["wait"]:
        return 0
    try:
        with follow(out["run_dir"]) if out["follows"] else contextlib.nullcontext():
            wait_results(out["job"])  # survives requeues
    except Exception as e:  # the job failed: name the rank that failed first, not a peer's hang-up
        summary = failure_summary(out["run_dir"], e, out["submitted"])
        print(f"job {out['job_id']} failed: {summary}", file=sys.stderr)
        return 1
    print(f"job {out['job_id']} finished")
    return 0
