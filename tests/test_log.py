"""The tracker survives W&B dying mid-run; a Slurm job frozen by SIGTERM writes no result."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrdist.log import build_tracker, drop_inherited_wandb_service


def test_wandb_failure_turns_wandb_off_and_keeps_metrics(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = build_tracker("wandb", tmp_path, is_main=True, group="t", config={"a": 1})
    tracker.log({"loss": 1.0}, step=1, prefix="train")

    def broken(*args, **kwargs):
        raise ConnectionResetError("Connection lost")

    monkeypatch.setattr(tracker.run, "log", broken)
    with caplog.at_level(logging.WARNING, logger="cxrdist.log"):
        tracker.log({"loss": 0.5}, step=2, prefix="train")  # must not raise
        tracker.log({"loss": 0.25}, step=3, prefix="train")
        tracker.log_images({"x": str(tmp_path / "missing.png")}, step=3, prefix="train")
        tracker.finish()
    warnings = [r for r in caplog.records if "W&B log failed" in r.getMessage()]
    assert len(warnings) == 1 and "ConnectionResetError" in warnings[0].getMessage()
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/loss"] for r in rows] == [1.0, 0.5, 0.25]
    assert [r["train/step"] for r in rows] == [1, 2, 3]
    assert [r["wandb"] for r in rows] == [True, True, False]


def test_unknown_logger_is_an_error(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown logger 'tensorboard'"):
        build_tracker("tensorboard", tmp_path, is_main=True)


def test_sigterm_freezes_until_killed(tmp_path: Path):
    """After SIGTERM nothing more runs (no result can be written); exit 143 only when no SIGKILL comes."""
    code = (
        "import os, signal, sys\n"
        "from cxrdist.run.sigterm import hold_on_sigterm\n"
        "hold_on_sigterm(max_wait_s=1.5)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('went on', flush=True)\n"
    )
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 128 + 15, out.stderr
    assert "went on" not in out.stdout
    assert time.monotonic() - start >= 1.5


def test_read_metrics_keeps_each_step_once_latest_attempt_winning(tmp_path: Path):
    """Attempt 1 logged steps 1-3 (and epoch 0's val row at step 2) then was killed mid-line; attempt 2 resumed
    from step 1 and redid steps 2-3 with other values; an eval stage logged at its own step 0."""
    from cxrdist.log import read_metrics

    rows = [
        {"attempt": 1, "time": 1, "train/loss": 0.9, "train/step": 1},
        {"attempt": 1, "time": 2, "train/loss": 0.8, "train/step": 2},
        {"attempt": 1, "time": 3, "train/val/loss": 0.7, "train/epoch": 0, "train/step": 2},
        {"attempt": 1, "time": 4, "train/loss": 0.6, "train/step": 3},
        {"attempt": 2, "time": 5, "train/loss": 0.81, "train/step": 2},
        {"attempt": 2, "time": 6, "train/loss": 0.61, "train/step": 3},
        {"attempt": 2, "time": 7, "eval/test/auroc": 0.5, "eval/step": 0},
    ]
    path = tmp_path / "logs" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"attempt": 1, "train/lo')
    got = read_metrics(tmp_path)
    assert [(r.get("train/step"), r.get("eval/step")) for r in got] == [(1, None), (2, None), (3, None), (None, 0)]
    assert [r.get("train/loss") for r in got[:3]] == [0.9, 0.81, 0.61]
    assert got[1]["train/val/loss"] == 0.7 and got[1]["train/epoch"] == 0  # not redone: attempt 1's value stays
    assert [r["attempt"] for r in got] == [1, 2, 2, 2]


def test_metrics_rows_carry_the_attempt(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = build_tracker("wandb", tmp_path, is_main=True, group="t", attempt=3)
    tracker.log({"loss": 1.0}, step=1, prefix="train")
    tracker.finish()
    row = json.loads((tmp_path / "logs" / "metrics.jsonl").read_text())
    assert row["attempt"] == 3 and row["train/step"] == 1


def test_sigterm_line_is_logged_while_the_main_thread_is_stuck_in_c(tmp_path: Path):
    """The SIGTERM line is logged even when the main thread never returns to Python (as in a collective whose
    peer is frozen by the same SIGTERM): here it blocks in pthread_mutex_lock on a mutex it already holds."""
    code = (
        "import ctypes, sys\n"
        "from cxrdist.run.sigterm import hold_on_sigterm\n"
        "from cxrdist.log import setup_logging\n"
        "setup_logging(sys.argv[1], 0)\n"
        "hold_on_sigterm()\n"
        "print('ready', flush=True)\n"
        "libc = ctypes.CDLL(None)\n"
        "mutex = ctypes.create_string_buffer(64)\n"
        "libc.pthread_mutex_lock(mutex)\n"
        "libc.pthread_mutex_lock(mutex)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # into the second lock
        proc.send_signal(signal.SIGTERM)
        log = tmp_path / "logs" / "rank0.log"
        deadline = time.monotonic() + 20
        while "SIGTERM: Slurm is ending this attempt" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert proc.poll() is None  # still held (until Slurm's SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def test_a_job_drops_the_wandb_service_of_the_process_that_submitted_it(monkeypatch):
    """A requeued attempt attached to its submitter's W&B service found its own run id "in use" (#18)."""
    monkeypatch.setenv("WANDB_SERVICE", f"3-{os.getpid() + 1}-unix-/tmp/wandb-sock")
    assert drop_inherited_wandb_service() and "WANDB_SERVICE" not in os.environ
    own = f"3-{os.getpid()}-unix-/tmp/wandb-sock"
    monkeypatch.setenv("WANDB_SERVICE", own)
    assert not drop_inherited_wandb_service() and os.environ["WANDB_SERVICE"] == own
    monkeypatch.delenv("WANDB_SERVICE")
    assert not drop_inherited_wandb_service()
