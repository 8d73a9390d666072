"""The tracker survives W&B dying mid-run; a Slurm job frozen by SIGTERM writes no result."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrdist.log import build_tracker


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
        "from cxrdist.job import hold_on_sigterm\n"
        "hold_on_sigterm(max_wait_s=1.5)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('went on', flush=True)\n"
    )
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 128 + 15, out.stderr
    assert "went on" not in out.stdout
    assert time.monotonic() - start >= 1.5
