"""The run-dir lock (live owner refused and named, same job passes, dead owner taken over), attempts, error
records and the first failing rank; a run dir in use is refused before anything is written."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cxrdist.run import rundir


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_second_owner_is_refused_naming_the_first(tmp_path: Path):
    proc = _sleeper()
    try:
        rundir.acquire_lock(tmp_path, "first", pid=proc.pid, role="a local run")
        with pytest.raises(rundir.RunDirBusy) as err:
            rundir.acquire_lock(tmp_path, "second", role="a local run")
        text = str(err.value)
        assert "\n" not in text and f"is in use by a local run (pid {proc.pid} on {socket.gethostname()}" in text
        with pytest.raises(rundir.RunDirBusy):
            rundir.check_lock(tmp_path)
        rundir.acquire_lock(tmp_path, "first", role="a training job")  # the same job (a requeue) passes
        assert rundir.read_lock(tmp_path)["role"] == "a training job"
        rundir.release_lock(tmp_path, "second")  # not ours: kept
        assert rundir.read_lock(tmp_path)["token"] == "first"
    finally:
        proc.kill()
        proc.wait()


def test_dead_owner_is_taken_over(tmp_path: Path):
    proc = _sleeper()
    rundir.acquire_lock(tmp_path, "first", pid=proc.pid)
    proc.kill()
    proc.wait()
    rundir.check_lock(tmp_path)  # a dead owner holds nothing
    rundir.acquire_lock(tmp_path, "second")
    assert rundir.read_lock(tmp_path)["token"] == "second"
    rundir.release_lock(tmp_path, "second")
    assert rundir.read_lock(tmp_path) is None and list(tmp_path.iterdir()) == []


def test_reused_pid_is_not_an_owner(tmp_path: Path):
    rundir.acquire_lock(tmp_path, "first")
    lock = tmp_path / rundir.LOCK_FILE
    lock.write_text(json.dumps({**json.loads(lock.read_text()), "pid_start": "1"}))  # same pid, other process
    rundir.acquire_lock(tmp_path, "second")
    assert rundir.read_lock(tmp_path)["token"] == "second"


class _Squeue:
    def __init__(self, state: str):
        self.stdout, self.stderr, self.returncode = state, "", 0


def test_slurm_owner_is_live_while_squeue_lists_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A Slurm job's lock is judged by squeue (any node, any host), not by its pid."""
    state = {"now": "REQUEUED\n"}
    monkeypatch.setattr(rundir.subprocess, "run", lambda *a, **k: _Squeue(state["now"]))
    rundir.acquire_lock(tmp_path, "job", slurm_job_id="42", pid=999999)
    lock = tmp_path / rundir.LOCK_FILE
    lock.write_text(json.dumps({**json.loads(lock.read_text()), "host": "node-elsewhere"}))
    with pytest.raises(rundir.RunDirBusy, match="in use by Slurm job 42 .*scancel 42"):
        rundir.acquire_lock(tmp_path, "other")
    rundir.acquire_lock(tmp_path, "job")  # the requeued attempt of job 42 (same token) passes
    assert rundir.read_lock(tmp_path)["slurm_job_id"] == "42"
    state["now"] = ""  # job 42 left the queue
    rundir.acquire_lock(tmp_path, "other")
    assert rundir.read_lock(tmp_path)["token"] == "other"


def test_owner_on_another_host_without_slurm_is_refused_with_the_fix(tmp_path: Path):
    rundir.acquire_lock(tmp_path, "first")
    lock = tmp_path / rundir.LOCK_FILE
    lock.write_text(json.dumps({**json.loads(lock.read_text()), "host": "node-elsewhere"}))
    with pytest.raises(rundir.RunDirBusy, match=f"cannot check; if it is gone, delete {lock}"):
        rundir.acquire_lock(tmp_path, "second")


def test_busy_run_dir_is_refused_before_anything_is_written(shard_root: Path, tmp_path: Path):
    from cxrdist.config import compose
    from cxrdist.run.prepare import prepare_run

    run = tmp_path / "run"
    cfg = compose(["method=chexnet", "method.model.pretrained=false", f"data.root={shard_root}", f"run_dir={run}"])
    prepare_run(cfg, lock="first")
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(rundir.RunDirBusy, match=f"{run} is in use by a submission"):
        prepare_run(cfg, lock="second")
    with pytest.raises(rundir.RunDirBusy):
        prepare_run(cfg)  # without a lock of its own: still refused
    assert sorted(p.name for p in run.rglob("*")) == before
    rundir.release_lock(run, "first")
    prepare_run(cfg, lock="second")


def test_attempts_and_first_failure(tmp_path: Path):
    assert rundir.begin_attempt(tmp_path, token="t", role="a training job", world_size=2) == 1
    assert rundir.begin_attempt(tmp_path, token="t", role="a training job", world_size=2) == 2
    rundir.record_error(tmp_path, 1, 1, ValueError("old attempt"))
    rundir.record_error(tmp_path, 2, 0, RuntimeError("[gloo] Connection closed by peer [10.0.0.2]:2999"))
    rundir.record_error(tmp_path, 2, 1, KeyError("the real cause"))
    first = rundir.first_failure(tmp_path)  # the latest attempt; an own error before a hang-up
    assert first["rank"] == 1 and first["type"] == "KeyError" and not first["peer_hangup"]
    assert "Traceback" in first["traceback"] or first["traceback"].startswith("KeyError")
    assert rundir.first_failure(tmp_path, attempt=1)["message"] == "old attempt"
    line = rundir.failure_line(first, tmp_path)
    assert line == f"rank 1 failed: KeyError: 'the real cause' (traceback: {tmp_path}/logs/rank1.log)"
