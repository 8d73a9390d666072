"""ONE W&B run per run dir, whatever happened to the jobs that wrote it (``launch/wandb_sync.py``).

W&B cannot resume or append to an *offline* run (wandb#2423, #3841, #5865): every job segment (a requeue, a
resubmission, each ``launch/evaluate.py``) writes its own ``offline-run-*`` folder under the same id, and
syncing them in turn loses or overwrites history. So this module rebuilds the run from the run dir's own
complete record instead, as one offline run with the persisted id (``RUN/wandb_id.txt``):

- history: every row of ``logs/metrics.jsonl`` once, in step order, across attempts and evaluations
  (:func:`cxrdist.log.read_metrics`: each stage's step once, the latest attempt winning), each with its
  ``<stage>/attempt``; images (box overlays included) at the step they were logged at, from
  ``logs/tracker.jsonl``, read from their files in the run dir;
- tables as logged, plus ``cxrdist/attempts`` (each job start, its role and how it ended);
- summary: the last value of every metric, the best val AUROC / min val loss and their epoch (wandb_run.py),
  ``cxrdist/state`` and ``cxrdist/error``;
- state: that of the last attempt: finished; failed (its error line, from its end record or the rank error
  records of rundir.py); running while a live job holds the run dir's lock; else preempted (killed without
  an end: requeue, preemption, time limit, scancel).

It is written to ``RUN/wandb/consolidated/wandb/offline-run-*-<id>`` (built aside, then switched in) with
``source.json`` holding the fingerprint of what it was built from: a second call with nothing new builds
nothing and syncs nothing (``synced.json``). ``wandb sync`` of the folder uploads it where there is a network;
online, W&B replaces the run's history with this complete one. W&B's own per-row timestamps are those of the
consolidation (the original time of each row stays in metrics.jsonl).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import netrc
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrdist import wandb_run
from cxrdist.config import load_config, to_container
from cxrdist.log import read_metrics, wandb_environment
from cxrdist.run import rundir

logger = logging.getLogger(__name__)
CONSOLIDATED = Path("wandb") / "consolidated"
_DROPPED = ("time", "attempt", "wandb")  # bookkeeping of metrics.jsonl rows, not metrics


class SyncError(ValueError):
    """A run dir that cannot be consolidated (one line naming the file and what to do)."""


@dataclass
class Plan:
    """What the consolidated run holds (built from the run dir's files only)."""

    run_id: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    tables: dict[str, dict[str, Any]]
    attempts: list[dict[str, Any]]
    state: str
    error: str | None
    missing: list[str] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 of everything the consolidated run is built from."""
        text = json.dumps(
            [self.run_id, self.rows, self.tables, self.attempts, self.state, self.error, self.missing, self.models],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Result:
    """Where the consolidated run is, whether this call rebuilt it, and its sync outcome."""

    folder: Path
    built: bool
    plan: Plan
    synced: bool | None = None
    sync_note: str = ""


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (none if absent); a line cut short by a kill is skipped."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def attempt_states(run_dir: Path, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each attempt of ``attempts.jsonl`` with how it ended: ``state`` and ``error`` (see the module doc)."""
    ends = {e["attempt"]: e for e in events if e.get("kind") == "end"}
    attempts = _jsonl(run_dir / rundir.ATTEMPTS_FILE)
    lock = rundir.read_lock(run_dir)
    live = lock is not None and rundir.owner_alive(lock) is True
    out = []
    for i, a in enumerate(attempts):
        end = ends.get(a["attempt"])
        failure = rundir.first_failure(run_dir, a["attempt"])
        if end is not None:
            state, error = end["state"], end.get("error")
        elif failure is not None:
            state, error = "failed", rundir.failure_line(failure, run_dir)
        elif i == len(attempts) - 1 and live:
            state, error = "running", None
        else:
            state, error = "preempted", None
        if state == "failed" and failure is not None:
            error = rundir.failure_line(failure, run_dir)  # names the rank that failed first and its traceback
        keep = ("attempt", "role", "slurm_job_id", "slurm_restart_count", "host", "world_size", "started")
        out.append({k: a.get(k) for k in keep} | {"state": state, "error": error})
    return out


def _history(run_dir: Path, events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """metrics.jsonl rows (read_metrics) with each logged image merged into its (axis, step) row; the missing
    image files."""
    rows = []
    for r in read_metrics(run_dir):
        axis = wandb_run.step_axis(r)
        stage = axis.rsplit("/", 1)[0]
        rows.append({k: v for k, v in r.items() if k not in _DROPPED} | {f"{stage}/attempt": r["attempt"]})
    index = {(wandb_run.step_axis(r), r[wandb_run.step_axis(r)]): r for r in rows}
    missing = []
    for e in (e for e in events if e.get("kind") == "images"):
        axis = wandb_run.step_axis(e)
        row = index.get((axis, e[axis]))
        if row is None:
            row = index[(axis, e[axis])] = {axis: e[axis]}
            rows.append(row)
        for key, spec in e["images"].items():
            if (run_dir / spec["path"]).is_file():
                row[key] = {**spec, "path": str(run_dir / spec["path"])}
            else:
                missing.append(spec["path"])
    axes = list(dict.fromkeys(wandb_run.step_axis(r) for r in rows))
    rows.sort(key=lambda r: (axes.index(wandb_run.step_axis(r)), r[wandb_run.step_axis(r)]))
    return rows, missing


def stage_models(run_dir: Path) -> list[dict[str, Any]]:
    """Each finished stage's ``best.pt`` (stage, path, size, mtime) for the model artifacts (logger.log_model)."""
    found = []
    for stage in sorted((run_dir / "stages").glob("[0-9][0-9]_*")):
        weights = stage / "best.pt"
        if (stage / "DONE.json").is_file() and weights.is_file():
            st = weights.stat()
            found.append({"stage": stage.name, "path": str(weights), "size": st.st_size, "mtime": st.st_mtime})
    return found


def plan(run_dir: str | Path) -> Plan:
    """Read what the consolidated run of ``run_dir`` holds; a run dir without W&B records is a SyncError."""
    run_dir = Path(run_dir)
    for name, why in (
        ("config.yaml", "not a cxrdist run dir"),
        ("wandb_id.txt", "it did not run with logger=wandb"),
        ("logs/metrics.jsonl", "it did not run with logger=wandb (or logged nothing yet)"),
    ):
        if not (run_dir / name).is_file():
            raise SyncError(f"{run_dir / name} is missing: {why}; nothing to consolidate")
    events = _jsonl(run_dir / "logs" / "tracker.jsonl")
    attempts = attempt_states(run_dir, events)
    rows, missing = _history(run_dir, events)
    tables = {e["name"]: {k: e.get(k) for k in ("columns", "rows", "line")} for e in events if e.get("kind") == "table"}
    last = attempts[-1] if attempts else {"state": "preempted", "error": None}
    config = to_container(load_config(run_dir / "config.yaml"))
    return Plan(
        run_id=(run_dir / "wandb_id.txt").read_text().strip(),
        config=config,
        rows=rows,
        tables=tables,
        attempts=attempts,
        state=last["state"],
        error=last["error"],
        missing=missing,
        models=stage_models(run_dir) if config.get("logger", {}).get("log_model") else [],
    )


@contextlib.contextmanager
def wandb_env(run_dir: Path, build_dir: Path, mode: str = "offline"):
    """W&B's directories inside ``run_dir`` (the build goes to ``build_dir``), in ``mode``; restored afterwards."""
    env = wandb_environment(run_dir) | {"WANDB_DIR": str(build_dir), "WANDB_MODE": mode, "WANDB_SILENT": "true"}
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if k not in ("WANDB_MODE", "WANDB_SILENT"):
            Path(v).mkdir(parents=True, exist_ok=True)
        os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _build(run_dir: Path, p: Plan, build_dir: Path) -> None:
    """Write the consolidated offline run of ``p`` under ``build_dir``."""
    import wandb  # optional heavy dependency (logger=none runs never need it)

    cfg = p.config
    world = next((a["world_size"] for a in reversed(p.attempts) if a.get("world_size")), None)
    with wandb_env(run_dir, build_dir):
        run = wandb.init(
            project=cfg.get("logger", {}).get("project") or "cxrdist",
            entity=cfg.get("logger", {}).get("entity"),
            group=cfg.get("method", {}).get("name"),
            name=run_dir.name,
            id=p.run_id,
            config=cfg,
            tags=wandb_run.run_tags(cfg, world),
            job_type="train",
            dir=str(build_dir),
            mode="offline",
            settings=wandb.Settings(console="off", x_disable_stats=True, x_save_requirements=False),
        )
        axes: set[str] = set()
        summaries: set[str] = set()
        best: dict[str, Any] = {}
        for row in p.rows:
            axis = wandb_run.step_axis(row)
            if axis not in axes:
                wandb_run.define_axis(run, axis)
                axes.add(axis)
            wandb_run.define_summaries(run, list(row), summaries)
            run.log({k: wandb_run.wandb_image(wandb, v) if isinstance(v, dict) else v for k, v in row.items()})
            wandb_run.update_best(best, row)
        columns = ["attempt", "role", "state", "error", "slurm_job_id", "slurm_restart_count", "world_size", "started"]
        tables = {"cxrdist/attempts": {"columns": columns, "rows": [[a[c] for c in columns] for a in p.attempts]}}
        tables |= p.tables
        run.log({name: wandb_run.wandb_table(wandb, name, t) for name, t in tables.items()})
        run.summary.update(best | {"cxrdist/num_attempts": len(p.attempts)})
        if p.missing:
            run.summary["cxrdist/missing_media"] = p.missing
        for m in p.models:
            art = wandb.Artifact(f"{run_dir.name}-{m['stage']}", type="model", metadata={"stage": m["stage"]})
            # a finished stage's weights never change: no copy into the staging area or the cache
            art.add_file(m["path"], name="best.pt", policy="immutable", skip_cache=True)
            run.log_artifact(art, aliases=["best", m["stage"]])
        wandb_run.end_run(run, p.state, p.error)


def consolidated_folder(run_dir: str | Path) -> Path | None:
    """The consolidated ``offline-run-*`` folder of ``run_dir``, or None before the first consolidation."""
    found = sorted((Path(run_dir) / CONSOLIDATED / "wandb").glob("offline-run-*"))
    return found[-1] if found else None


def current_folder(target: Path, fingerprint: str) -> Path | None:
    """The W&B run folder under ``target`` when ``target/source.json`` says it was built from ``fingerprint``
    (nothing to rebuild), else None."""
    found = sorted((target / "wandb").glob("*run-*"))
    source = target / "source.json"
    if found and source.is_file() and json.loads(source.read_text()).get("fingerprint") == fingerprint:
        return found[-1]
    return None


def switch_in(build: Path, target: Path, source: dict[str, Any]) -> None:
    """Write ``source.json`` (the fingerprint and what it describes) into ``build``, then put ``build`` in
    ``target``'s place whole: a reader sees the old run or the new one, never a half (one folder, never a pile)."""
    (build / "source.json").write_text(json.dumps(source) + "\n")
    old = target.parent / f".{target.name}-old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    build.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def consolidate(run_dir: str | Path) -> Result:
    """Build (or keep, when nothing changed) the one consolidated offline W&B run of ``run_dir``."""
    run_dir = Path(run_dir)
    p = plan(run_dir)
    fp = p.fingerprint()
    target = run_dir / CONSOLIDATED
    folder = current_folder(target, fp)
    if folder is not None:
        return Result(folder, built=False, plan=p)
    for name in p.missing:
        logger.warning("%s: image %s is gone; left out of the consolidated run (listed in its summary)", run_dir, name)
    build = run_dir / "wandb" / f".consolidating-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    _build(run_dir, p, build)
    switch_in(build, target, {"fingerprint": fp, "rows": len(p.rows), "state": p.state})
    folder = consolidated_folder(run_dir)
    logger.info("%s: consolidated W&B run %s (%d rows, %s) in %s", run_dir, p.run_id, len(p.rows), p.state, folder)
    return Result(folder, built=True, plan=p)


def _has_api_key() -> bool:
    """Whether ``wandb sync`` has credentials: WANDB_API_KEY, or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def sync(run_dir: str | Path, result: Result, timeout_s: float = 900.0) -> Result:
    """``wandb sync`` the consolidated folder unless this very build was synced already; notes why not."""
    target = Path(run_dir) / CONSOLIDATED
    marker = target / "synced.json"
    fp = json.loads((target / "source.json").read_text())["fingerprint"]
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fp:
        result.synced, result.sync_note = True, "already synced"
        return result
    if not _has_api_key():
        result.synced, result.sync_note = False, "no W&B API key here (WANDB_API_KEY or `wandb login`)"
        return result
    cmd = [sys.executable, "-m", "wandb", "sync", "--yes", str(result.folder)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        result.synced, result.sync_note = False, f"wandb sync took over {timeout_s:.0f} s"
        return result
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or out.stdout.strip().splitlines() or ["?"])[-1]
        result.synced, result.sync_note = False, f"wandb sync failed: {last}"
        return result
    marker.write_text(json.dumps({"fingerprint": fp, "time": time.time()}) + "\n")
    result.synced, result.sync_note = True, "synced"
    return result


def job_is_live(run_dir: str | Path) -> bool:
    """Whether a live job holds the run dir's lock (rundir.py)."""
    lock = rundir.read_lock(run_dir)
    return lock is not None and rundir.owner_alive(lock) is True


def watch(run_dir: str | Path, every_s: float, do_sync: bool, report=print, sleep=time.sleep) -> Result:
    """Consolidate (and sync) every ``every_s`` while a job holds the run dir, then once more; the last Result.

    ``report`` gets a line per build or failed sync; ``sleep`` waits between rounds (a test passes its own)."""
    while True:
        live = job_is_live(run_dir)
        result = consolidate(run_dir)
        if do_sync:
            sync(run_dir, result)
        if result.built or result.synced is False:
            report(describe(result))
        if not live:
            return result
        sleep(every_s)


def describe(result: Result) -> str:
    """One line for the console: where the consolidated run is, its rows and state, and the sync outcome."""
    p = result.plan
    what = "built" if result.built else "unchanged"
    line = f"{result.folder}: {what}, {len(p.rows)} rows, {len(p.attempts)} attempts, state {p.state}"
    if result.synced is False:
        line += f"; not synced ({result.sync_note}): run `wandb sync {result.folder}` where there is a network"
    elif result.synced:
        line += f"; {result.sync_note}"
    return line
