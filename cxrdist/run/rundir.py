"""What a run dir knows about the jobs that use it: the lock of the live job, attempts and each rank's error.

Lock (``RUN/lock.json``): one job at a time writes a run dir. The launcher takes the lock before it creates
or submits anything and hands its token to the job; the job's rank 0 takes it again at every start, so a
requeued or resubmitted attempt of the *same* job (same token) passes while any other is refused with the
owner named. The file holds the token, the Slurm job id when there is one, host, pid and the pid's start
time. An owner counts as live while Slurm lists its job as pending/running/requeued (asked with ``squeue``,
which answers the same on every node of a shared filesystem), or, without Slurm, while its pid runs on this
host with the same start time. A dead owner's lock is taken over (a job killed with SIGKILL cannot release
it); a lock this host cannot check (a pid on another host, no Slurm) is refused with how to remove it.
Creation is ``link()`` of a complete temp file, which is atomic and exclusive on local disks and NFS.

Attempts (``RUN/attempts.jsonl``): every job start (first run, requeue, resubmission, evaluation) appends one
row under the lock; its number tags that attempt's ``metrics.jsonl`` rows and error records.

Errors (``RUN/logs/errors/aNNN-rankR.json``): each rank's uncaught exception with its traceback. When one
rank fails, its peers fail in the next collective with a hang-up ("Connection closed by peer"); those are
marked ``peer_hangup`` so that :func:`first_failure` names the rank that failed first and its real error.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
LOCK_FILE = "lock.json"
ATTEMPTS_FILE = "attempts.jsonl"
ERRORS_DIR = Path("logs") / "errors"
# squeue states of a job that will still run (or is finishing): a requeued job passes through these.
SLURM_LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                     "SUSPENDED", "RESIZING", "STAGE_OUT", "SIGNALING"}  # fmt: skip
# Messages of a collective that failed because a peer process went away, not because of this rank.
_HANGUP_MARKERS = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "remote process exited",
    "socket closed",
    "ncclremoteerror",
    "timed out",
    "timeout",
)


class RunDirBusy(ValueError):
    """The run dir is held by another live job (one line naming it)."""


class RankFailedError(RuntimeError):
    """This rank stopped because another rank failed first (the message is that rank's error)."""


def new_token() -> str:
    """A fresh lock token (one per submission; requeues of the submission keep it)."""
    return uuid.uuid4().hex[:16]


def _pid_start(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks since boot), to tell a live owner from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_record(token: str, slurm_job_id: str | None, pid: int | None, role: str) -> dict[str, Any]:
    pid = os.getpid() if pid is None else int(pid)
    return {
        "token": token,
        "slurm_job_id": str(slurm_job_id) if slurm_job_id else None,
        "host": socket.gethostname(),
        "pid": pid,
        "pid_start": _pid_start(pid),
        "role": role,
        "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def slurm_job_state(job_id: str) -> str | None:
    """Slurm's state of ``job_id`` ('' once it has left the queue), or None when squeue cannot be asked."""
    try:
        cmd = ["squeue", "-h", "-j", str(job_id), "-o", "%T"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        # An unknown (long finished) job id is an error for squeue, not an empty answer.
        return "" if "invalid job id" in out.stderr.lower() else None
    states = [s.strip() for s in out.stdout.splitlines() if s.strip()]
    return next((s for s in states if s in SLURM_LIVE_STATES), states[0] if states else "")


def owner_alive(owner: dict[str, Any]) -> bool | None:
    """True while the lock's owner can still run, False once it is gone, None when this host cannot tell."""
    if owner.get("slurm_job_id"):
        state = slurm_job_state(owner["slurm_job_id"])
        if state is not None:
            return state in SLURM_LIVE_STATES
    if owner.get("host") != socket.gethostname():
        return None
    start = _pid_start(int(owner.get("pid", -1)))
    return start is not None and start == owner.get("pid_start")


def read_lock(run_dir: str | Path) -> dict[str, Any] | None:
    """The lock's owner record, or None when the run dir is free."""
    path = Path(run_dir) / LOCK_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, OSError):
        return {"token": None, "host": "?", "pid": -1, "unreadable": True}


def _describe(run_dir: Path, owner: dict[str, Any], alive: bool | None) -> str:
    path = run_dir / LOCK_FILE
    where = f"pid {owner.get('pid')} on {owner.get('host')}, since {owner.get('since')}"
    if owner.get("unreadable"):
        return f"{run_dir}: unreadable lock file {path}; if no job uses this run dir, delete it"
    if owner.get("slurm_job_id") and alive:
        job = owner["slurm_job_id"]
        return f"{run_dir} is in use by Slurm job {job} ({where}); wait for it to end or scancel {job}"
    if alive:
        return f"{run_dir} is in use by {owner.get('role', 'a job')} ({where}); wait for it to end or stop it"
    return (
        f"{run_dir} is locked by {owner.get('role', 'a job')} ({where}), which this host cannot check; "
        f"if it is gone, delete {path}"
    )


def _link_new(path: Path, record: dict[str, Any]) -> bool:
    """Create ``path`` holding ``record`` only if it does not exist (complete content, atomic)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(record, sort_keys=True) + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _replace(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(record, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _break_stale(path: Path, stale: dict[str, Any]) -> None:
    """Remove a dead owner's lock, unless someone replaced it meanwhile (then put theirs back)."""
    aside = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        if json.loads(aside.read_text()) != stale:
            os.link(aside, path)  # a fresh lock was moved aside: restore it (unless yet another one exists)
    except (OSError, json.JSONDecodeError):
        pass
    aside.unlink(missing_ok=True)


def acquire_lock(
    run_dir: str | Path, token: str, *, slurm_job_id: str | None = None, pid: int | None = None, role: str = "job"
) -> None:
    """Take the run dir's lock for ``token`` (re-taking our own lock refreshes it); raise RunDirBusy if held."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    record = _owner_record(token, slurm_job_id, pid, role)
    for _ in range(10):
        if _link_new(path, record):
            return
        current = read_lock(run_dir)
        if current is None:
            continue  # released meanwhile
        if current.get("token") == token:
            if not record["slurm_job_id"]:
                record["slurm_job_id"] = current.get("slurm_job_id")  # a job step keeps its submission's job id
            _replace(path, record)
            return
        alive = None if current.get("unreadable") else owner_alive(current)
        if alive is not False:
            raise RunDirBusy(_describe(run_dir, current, alive))
        logger.warning("%s: taking over the lock of a job that is gone (%s)", run_dir, current)
        _break_stale(path, current)
    raise RunDirBusy(f"{run_dir}: could not take {path} (it keeps changing); is another job starting?")


def check_lock(run_dir: str | Path, token: str | None = None) -> None:
    """Raise RunDirBusy if a live owner other than ``token`` holds the run dir (takes nothing)."""
    current = read_lock(run_dir)
    if current is None or (token is not None and current.get("token") == token):
        return
    alive = None if current.get("unreadable") else owner_alive(current)
    if alive is not False:
        raise RunDirBusy(_describe(Path(run_dir), current, alive))


def update_lock(run_dir: str | Path, token: str, **fields: Any) -> None:
    """Record more about our own lock (e.g. the Slurm job id once submitted); no-op if it is not ours."""
    path = Path(run_dir) / LOCK_FILE
    current = read_lock(run_dir)
    if current is None or current.get("token") != token:
        return
    if "pid" in fields:
        fields["pid_start"] = _pid_start(int(fields["pid"]))
    _replace(path, {**current, **fields})


def release_lock(run_dir: str | Path, token: str) -> None:
    """Give the lock up if it is ours."""
    current = read_lock(run_dir)
    if current is not None and current.get("token") == token:
        (Path(run_dir) / LOCK_FILE).unlink(missing_ok=True)


def begin_attempt(run_dir: str | Path, *, token: str | None, role: str, world_size: int) -> int:
    """Append this job start to ``RUN/attempts.jsonl`` and return its number (1, 2, ...). Rank 0, under the lock."""
    path = Path(run_dir) / ATTEMPTS_FILE
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []
    row = {
        "attempt": len(lines) + 1,
        "role": role,
        "token": token,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "world_size": world_size,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return row["attempt"]


def is_peer_hangup(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank went away (not this rank's own error)."""
    if isinstance(exc, RankFailedError):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return "dist" in type(exc).__name__.lower() or any(m in text for m in _HANGUP_MARKERS)


def record_error(run_dir: str | Path, attempt: int, rank: int, exc: BaseException) -> dict[str, Any]:
    """Write this rank's uncaught error (with traceback) to ``RUN/logs/errors/``; return the record."""
    record = {
        "attempt": attempt,
        "rank": rank,
        "time": time.time(),
        "type": type(exc).__name__,
        "message": str(exc).strip().splitlines()[0] if str(exc).strip() else "",
        "peer_hangup": is_peer_hangup(exc),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    folder = Path(run_dir) / ERRORS_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _replace(folder / f"a{attempt:03d}-rank{rank}.json", record)
    except OSError as e:  # e.g. the disk is full: the rank log still has the traceback
        logger.error("could not write the error record of rank %d to %s: %s", rank, folder, e)
    return record


def failures(run_dir: str | Path, attempt: int | None = None, since: float = 0.0) -> list[dict[str, Any]]:
    """The error records of ``attempt`` (default: that of the newest record written after ``since``), first
    failure first: a rank's own error before any peer hang-up, then by time."""
    folder = Path(run_dir) / ERRORS_DIR
    records = []
    for p in sorted(folder.glob("a*-rank*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record["time"] >= since:
            records.append(record)
    if attempt is None and records:
        attempt = max(records, key=lambda r: r["time"])["attempt"]
    return sorted((r for r in records if r["attempt"] == attempt), key=lambda r: (r["peer_hangup"], r["time"]))


def first_failure(run_dir: str | Path, attempt: int | None = None, since: float = 0.0) -> dict[str, Any] | None:
    """The record of the rank that failed first (see :func:`failures`), or None."""
    found = failures(run_dir, attempt, since)
    return found[0] if found else None


def wait_first_failure(run_dir: str | Path, attempt: int, *, not_rank: int, timeout_s: float) -> dict | None:
    """Poll up to ``timeout_s`` for another rank's own (not hang-up) error in ``attempt``; None if none comes."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [r for r in failures(run_dir, attempt) if r["rank"] != not_rank and not r["peer_hangup"]]
        if found or time.monotonic() > deadline:
            return found[0] if found else None
        time.sleep(0.5)


def failure_line(record: dict[str, Any], run_dir: str | Path) -> str:
    """One line for a failure record: rank, error and where its traceback is."""
    log = Path(run_dir) / "logs" / f"rank{record['rank']}.log"
    return f"rank {record['rank']} failed: {record['type']}: {record['message']} (traceback: {log})"
