"""Multi-run sweeps: ``launch/submit.py -m method=ma,cral seed=0,1,2`` submits ONE submitit job array.

Hydra's multirun syntax (``key=a,b``, ``range(0,3)``, ``choice(...)``, ``glob(...)``): the combinations are the
cartesian product of the swept overrides, in the order given (Hydra's basic sweeper). Each element is a normal
run in its own run dir ``runs/<name>/<override-dir>`` (``--name``, default ``sweep``; or ``--run-dir ROOT``),
``<override-dir>`` being the swept ``key=value`` pairs joined by commas, as Hydra's ``override_dirname``. Every
element's config is composed and checked, and every run dir checked (a different saved config is refused,
unless ``--force``), before any run dir is taken or anything submitted; each element then takes its run dir's
lock, so it resumes and refuses exactly as a single run does. The array's submitit folder is
``runs/<name>/submitit``. ``--dry-run`` prints the elements and the array's job script. ``--cluster local`` runs
the elements on this machine one after another (at once they would share its CPUs and GPUs). Waiting (``--wait``,
``--cluster local``), the sweep ends with its leaderboard: ``runs/<name>/report/report.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from cxrdist import cli
from cxrdist.cli import UsageError
from cxrdist.config import to_container
from cxrdist.data.format import read_json
from cxrdist.eval.compare import NUM_RESAMPLES, SEED
from cxrdist.eval.report import load_runs, write_runs_report
from cxrdist.progress import follow
from cxrdist.run import launcher, report_wandb, rundir
from cxrdist.run.job import Job
from cxrdist.run.prepare import _check_saved_config, prepare_run

logger = logging.getLogger(__name__)
MULTIRUN_FLAGS = ("-m", "--multirun")


def swept(overrides: list[str]) -> list[tuple[str, list[str]]]:
    """``(override key as written, values)`` of each sweep override (``method=ma,cral``); a bad one is one line."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise UsageError(f"cannot parse the overrides: {cli.one_line(e)}") from None
    out = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.input_line.split("=", 1)[0]
            out.append((key, [str(v) for v in o.sweep_string_iterator()]))
    return out


def expand(overrides: list[str]) -> list[tuple[list[str], dict[str, str]]]:
    """Each combination's full override list (fixed ones first) and its swept ``{key: value}``."""
    sweeps = swept(overrides)
    keys = {k for k, _ in sweeps}
    fixed = [o for o in overrides if o.split("=", 1)[0] not in keys]
    combos = itertools.product(*[[(k, v) for v in values] for k, values in sweeps])
    return [([*fixed, *(f"{k}={v}" for k, v in combo)], dict(combo)) for combo in combos]


def override_dirname(values: dict[str, str]) -> str:
    """``method=ma,seed=0`` (Hydra's override_dirname of the swept keys; ``/`` in a value becomes ``_``)."""
    return ",".join(f"{k.lstrip('+~')}={v.replace('/', '_')}" for k, v in values.items())


def refuse_sweep(overrides: list[str]) -> None:
    """Without ``-m``, a sweep override is a mistake: say how to submit the sweep."""
    sweeps = swept(overrides)
    if sweeps:
        key, values = sweeps[0]
        raise UsageError(f"{key}={','.join(values)} sweeps several values: add -m (--multirun) to submit every "
                         "combination as one job array")  # fmt: skip


def _strip(argv: list[str]) -> tuple[list[str], bool]:
    return [a for a in argv if a not in MULTIRUN_FLAGS], any(a in MULTIRUN_FLAGS for a in argv)


def submit_any(argv: list[str]) -> dict[str, Any]:
    """``launch/submit.py``: a sweep with ``-m``, else a single run (whose overrides must not sweep)."""
    argv, multirun = _strip(argv)
    if multirun:
        return submit_sweep(argv)
    p = launcher.parser()
    refuse_sweep(cli.check_overrides(p.parse_known_args(argv)[1], p))
    return launcher.submit(argv)


def _resolve_all(argv: list[str]) -> tuple[argparse.Namespace, Path, list[tuple[Any, dict[str, str]]], int]:
    """Every element's checked config (launcher.resolve with the element's overrides and run dir)."""
    p = launcher.parser()
    args, extra = p.parse_known_args(argv)
    overrides = cli.check_overrides(extra, p)
    elements = expand(overrides)
    if not swept(overrides):
        raise UsageError("-m (--multirun) without a swept override: give key=a,b (e.g. seed=0,1,2)")
    root = args.run_dir or Path("runs") / (args.name or "sweep")
    flags = [a for a in argv if a not in extra]
    out, shapes = [], []
    for element_overrides, values in elements:
        run_dir = root / override_dirname(values)
        element_args, cfg, tasks = launcher.resolve([*flags, "--run-dir", str(run_dir), *element_overrides])
        out.append((cfg, values))
        shapes.append((to_container(cfg.cluster), tasks))
    _refuse_varying_job(shapes, [values for _, values in out])
    return element_args, root, out, tasks


def _refuse_varying_job(shapes: list[tuple[dict[str, Any], int]], values: list[dict[str, str]]) -> None:
    """One job array has one set of Slurm settings: a ``cluster.*`` value (or tasks per node) that differs
    between elements would silently be the first element's, so it is refused (one sweep per value instead)."""
    (cluster0, tasks0), first = shapes[0], override_dirname(values[0])
    for (cluster, tasks), vals in zip(shapes[1:], values[1:]):
        keys = sorted(k for k in cluster0.keys() | cluster.keys() if cluster0.get(k) != cluster.get(k))
        what = f"cluster.{keys[0]} ({cluster0.get(keys[0])} vs {cluster.get(keys[0])})" if keys else None
        what = what or (f"tasks per node ({tasks0} vs {tasks})" if tasks != tasks0 else None)
        if what:
            raise UsageError(
                f"{what} differs between sweep elements {first} and {override_dirname(vals)}: one job array "
                "runs with one set of cluster settings; submit one sweep per value"
            )


def _array_executor(args: argparse.Namespace, root: Path, tasks: int, cfg, n: int, preview: bool = False) -> Any:
    ex = launcher.build_executor(args, root / "submitit", tasks, cfg, preview=preview)
    if args.cluster == "slurm":
        ex.update_parameters(job_name="cxrdist-sweep")
        if preview:  # what submitit's array submission sets on its copy of the executor
            ex.parameters["map_count"] = n
    return ex


def _check_run_dirs(cfgs: list, force: bool) -> None:
    """Refuse before anything is taken: a run dir held by a live job, or saved with another config."""
    for cfg in cfgs:
        run_dir = Path(cfg.run_dir)
        rundir.check_lock(run_dir)
        if (run_dir / "config.yaml").is_file():
            if cfg.data.expected_config_hash is None:  # as prepare_run pins it, so the comparison is like for like
                cfg.data.expected_config_hash = read_json(Path(cfg.data.root) / "_dataset.json")["config_hash"]
            _check_saved_config(cfg, run_dir, force)


def _submit_one(args: argparse.Namespace, root: Path, tasks: int, cfg) -> tuple[Any, Path]:
    """Take one element's run dir and submit it alone (``--cluster local``/``debug``)."""
    token = rundir.new_token()
    run_dir = prepare_run(cfg, force=args.force, lock=token, role="a sweep element")
    try:
        job = launcher.build_executor(args, root / "submitit", tasks, cfg).submit(
            Job(to_container(cfg), str(run_dir), token)
        )
    except BaseException:
        rundir.release_lock(run_dir, token)
        raise
    if args.cluster == "local":
        rundir.update_lock(run_dir, token, pid=int(job.job_id), role=f"local job {job.job_id}")
    return job, run_dir


def submit_sweep(argv: list[str]) -> dict[str, Any]:
    """Check every element and run dir; on Slurm take every run dir and submit ONE job array. On this machine
    (``--cluster local``/``debug``) the elements run one after another when waited for (:func:`wait_sweep`): at
    once they would share its CPUs and GPUs (submitit's local executor gives every job the same GPUs)."""
    args, root, elements, tasks = _resolve_all(argv)
    cfgs = [cfg for cfg, _ in elements]
    listing = [(cfg.run_dir, values) for cfg, values in elements]
    base = {"sweep": listing, "root": str(root), "tasks": tasks}
    if args.dry_run:
        ex = _array_executor(args, root, tasks, cfgs[0], len(cfgs), preview=True)
        return base | {"script": launcher.job_script(ex), "notes": launcher.dry_run_notes(cfgs[0])}
    if args.cluster == "slurm":
        launcher.check_slurm()
    _check_run_dirs(cfgs, args.force)
    submitted = time.time()
    if args.cluster != "slurm":
        return base | {"pending": cfgs, "args": args, "submitted": submitted, "wait": True}
    taken: list[tuple[Path, str]] = []
    try:
        for cfg in cfgs:
            token = rundir.new_token()
            taken.append((prepare_run(cfg, force=args.force, lock=token, role="a sweep element"), token))
        ex = _array_executor(args, root, tasks, cfgs[0], len(cfgs))
        with ex.batch():
            jobs = [ex.submit(Job(to_container(cfg), str(rd), tok)) for cfg, (rd, tok) in zip(cfgs, taken)]
    except BaseException:
        for rd, tok in taken:
            rundir.release_lock(rd, tok)
        raise
    for job, (rd, tok) in zip(jobs, taken):
        rundir.update_lock(rd, tok, slurm_job_id=str(job.job_id), role=f"Slurm job {job.job_id}")
    run_dirs = [rd for rd, _ in taken]
    return base | {"jobs": jobs, "run_dirs": run_dirs, "submitted": submitted, "wait": args.wait}


def _failure(run_dir: Path, job: Any, e: Exception, since: float) -> str:
    return f"{run_dir}: job {job.job_id} failed: {launcher.failure_summary(run_dir, e, since)}"


def wait_sweep(out: dict[str, Any]) -> list[str]:
    """Wait for (on this machine: run, one after another) every element; one line per failed element."""
    failed = []
    if "pending" in out:
        args = out["args"]
        for cfg in out["pending"]:
            job, run_dir = _submit_one(args, Path(out["root"]), out["tasks"], cfg)
            print(f"running {run_dir} (job {job.job_id})", flush=True)
            try:
                with follow(run_dir) if args.cluster == "local" else contextlib.nullcontext():
                    launcher.wait_results(job)
            except Exception as e:  # name the rank that failed first, as a single run does; go on with the next
                failed.append(_failure(run_dir, job, e, out["submitted"]))
        return failed
    for job, run_dir in zip(out["jobs"], out["run_dirs"]):
        try:
            launcher.wait_results(job)
        except Exception as e:
            failed.append(_failure(run_dir, job, e, out["submitted"]))
    return failed


def leaderboard(root: str | Path) -> Path:
    """The sweep's report (leaderboard, forest plot) in ``ROOT/report``; to W&B too when its runs logged there,
    as the same run ``launch/report.py ROOT`` would log (report_wandb.py)."""
    runs, out = load_runs([Path(root)]), Path(root) / "report"
    md = write_runs_report(runs, out)
    if report_wandb.wanted(runs, None):
        run_id = report_wandb.report_run_id([r["dir"] for r in runs], None, NUM_RESAMPLES, SEED)
        logged = report_wandb.log_report(runs, out, run_id)
        logger.info("the sweep's leaderboard in W&B run %s: %s", run_id, logged.folder)
    return md


def print_sweep(out: dict[str, Any]) -> int:
    """``launch/submit.py -m``'s console: the elements, the array's job(s), and with waiting, the leaderboard."""
    for run_dir, values in out["sweep"]:
        print(f"  {override_dirname(values)} → {run_dir}")
    if "script" in out:
        print(f"# --- job array script ({len(out['sweep'])} elements, {out['tasks']} task(s) per node each) ---")
        print(out["script"])
        for note in out["notes"]:
            print(f"# note: {note}")
        return 0
    if "jobs" in out:
        ids = ", ".join(str(j.job_id) for j in out["jobs"])
        print(
            f"submitted a job array of {len(out['jobs'])} ({ids}); leaderboard: python launch/report.py {out['root']}"
        )
    else:
        print(f"{len(out['pending'])} runs on this machine, one after another; then the leaderboard", flush=True)
    if not out["wait"]:
        return 0
    failed = wait_sweep(out)
    for line in failed:
        print(line, file=sys.stderr)
    if failed:
        return 1
    print(f"sweep finished; leaderboard written to {leaderboard(out['root'])}", flush=True)
    return 0
