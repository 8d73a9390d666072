"""Progress meters (bar, log lines, the run's progress file) and the console follower of a submitted run."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import pytest

from cxrdist.progress import Progress, follow, progress_file


def test_without_a_terminal_progress_is_logged_with_rate_and_eta(caplog: pytest.LogCaptureFixture, tmp_path: Path):
    state = tmp_path / "logs" / "progress.json"
    with caplog.at_level(logging.INFO, logger="cxrdist.progress"):
        bar = Progress(100, "train epoch 0", every_s=0.0, tty=False, file=state)
        bar.update(25)
        mid = json.loads(state.read_text())
        bar.update(75)
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("train epoch 0: 25/100 img (25%), ") and " img/s, ETA " in lines[0]
    assert lines[-1].startswith("train epoch 0: 100/100 img (100%)") and lines[-1].endswith("(done)")
    assert mid["n"] in (0, 25) and not mid["done"]  # the file is rewritten at most once a second
    final = json.loads(state.read_text())
    assert (final["n"], final["total"], final["unit"], final["done"]) == (100, 100, "img", True)


def test_log_lines_are_spaced_and_a_disabled_meter_is_silent(caplog: pytest.LogCaptureFixture, tmp_path: Path):
    with caplog.at_level(logging.INFO, logger="cxrdist.progress"):
        with Progress(1000, "shards", every_s=3600, tty=False) as bar:
            for _ in range(1000):
                bar.update()
        with Progress(10, "rank 1", enabled=False, file=tmp_path / "p.json") as off:
            off.update(10)
    assert len(caplog.records) == 1 and "(done)" in caplog.records[0].getMessage()  # only the final line
    assert not (tmp_path / "p.json").exists()


def test_a_resumed_epoch_counts_only_new_work_in_the_rate():
    bar = Progress(100, "x", tty=False, enabled=False, initial=90)
    assert bar.n == 90 and bar.rate() == 0.0
    bar.update(10)
    assert bar.n == 100 and bar.rate() > 0


def _write_run(run: Path, lines: list[str], state: dict | None) -> None:
    log = run / "logs" / "rank0.log"
    with log.open("a") as fh:
        fh.write("".join(f"{line}\n" for line in lines))
    if state is not None:
        progress_file(run).write_text(json.dumps(state))


def test_follow_prints_the_new_rank0_lines(tmp_path: Path):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    _write_run(run, ["10:00:00 INFO [rank0] old: an earlier job's line"], None)
    out = io.StringIO()
    with follow(run, out=out, poll_s=0.05, tty=False):
        _write_run(run, ["10:01:00 INFO [rank0] cxrdist.engine.trainer: train epoch 1/2: train loss 0.5, 3.0 s"], None)
        time.sleep(0.3)
        _write_run(run, ["10:01:30 INFO [rank0] cxrdist.progress: train epoch 1: 10/20 img (50%)"], None)
    text = out.getvalue()
    assert "an earlier job's line" not in text  # only what this job adds
    assert "train epoch 1/2: train loss 0.5" in text and "10/20 img (50%)" in text  # no terminal: every line


def test_follow_draws_the_bar_on_a_terminal(tmp_path: Path):
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    out = io.StringIO()
    state = {"desc": "train epoch 0", "n": 0, "total": 64, "unit": "img", "done": False}
    with follow(run, out=out, poll_s=0.05, tty=True):
        _write_run(run, ["10:00:00 INFO [rank0] cxrdist.progress: train epoch 0: 0/64 img (0%)"], state)
        time.sleep(0.3)
        _write_run(run, ["10:00:01 INFO [rank0] cxrdist.pipeline: stage train: start"], {**state, "n": 32})
        time.sleep(0.3)
    text = out.getvalue()
    assert "train epoch 0" in text and "32/64" in text and "img/s" in text  # tqdm's bar, rate included
    assert "stage train: start" in text
    assert "cxrdist.progress: train epoch 0: 0/64" not in text  # the bar replaces the progress log lines
