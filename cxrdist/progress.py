"""Progress of long steps, shown where the user is looking.

:class:`Progress` is one meter with three outlets: a tqdm bar (rate and ETA) when stderr is a terminal; else a
log line at most every ``every_s`` seconds and at the end; and, on rank 0 of a run, a small JSON file
(``RUN/logs/progress.json``, rewritten at most once a second) for a console that follows the run.

Jobs started through submitit (``launch/submit.py --cluster local``, Slurm, the demo) write their console
output into files, so the launcher waiting for such a job calls :func:`follow`: it prints rank 0's new log lines
(stage starts, epoch lines with loss, val AUROC and time) as they come, and on a terminal draws the bar from the
JSON file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger(__name__)
PROGRESS_FILE = "progress.json"  # in RUN/logs, next to rank0.log


def progress_file(run_dir: Path | str) -> Path:
    """Where rank 0 of a run publishes its current progress."""
    return Path(run_dir) / "logs" / PROGRESS_FILE


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """A progress meter: ``update(n)`` as work is done, ``close()`` (or a ``with`` block) at the end.

    Args:
        total: units of work expected (None: unknown, no percentage or ETA).
        desc: what is being done, e.g. ``"train epoch 2"``.
        unit: the unit counted (``img``: the rate reads images/s).
        enabled: False makes every outlet silent (e.g. ranks other than 0).
        file: the JSON file to publish to (rank 0 of a run: :func:`progress_file`).
        every_s: seconds between log lines when stderr is not a terminal.
        tty: force the bar on (True) or off (False); default: whether stderr is a terminal.
        initial: units already done before this meter started (a resumed epoch); not counted in the rate.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "img",
        *,
        enabled: bool = True,
        file: Path | None = None,
        every_s: float = 30.0,
        tty: bool | None = None,
        initial: int = 0,
    ):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.n = self.initial = initial
        self._t0 = self._last_log = time.monotonic()
        self._last_file = 0.0
        tty = sys.stderr.isatty() if tty is None else tty
        self._bar = None
        if enabled and tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=False, dynamic_ncols=True)
        self._log = enabled and not tty
        self._file = file if enabled else None
        self._publish(force=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rate(self) -> float:
        """Units per second since the start."""
        return (self.n - self.initial) / max(time.monotonic() - self._t0, 1e-9)

    def line(self, final: bool = False) -> str:
        """``desc: n/total unit (p%), r unit/s, ETA m:ss, elapsed m:ss`` (what the log lines say)."""
        rate, elapsed = self.rate(), time.monotonic() - self._t0
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {_clock((self.total - self.n) / rate)}" if self.total and rate > 0 and not final else ""
        return f"{self.desc}: {done} {self.unit}{pct}, {rate:.1f} {self.unit}/s{eta}, elapsed {_clock(elapsed)}"

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        now = time.monotonic()
        if self._log and now - self._last_log >= self.every_s:
            self._last_log = now
            logger.info("%s", self.line())
        self._publish()

    def close(self) -> None:
        """Finish: close the bar, log the last line (no terminal) and mark the JSON file done."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._log:
            logger.info("%s (done)", self.line(final=True))
            self._log = False
        self._publish(force=True, done=True)
        self._file = None

    def _publish(self, force: bool = False, done: bool = False) -> None:
        now = time.monotonic()
        if self._file is None or (not force and now - self._last_file < 1.0):
            return
        self._last_file = now
        state = {"desc": self.desc, "n": self.n, "total": self.total, "unit": self.unit, "done": done,
                 "rate": round(self.rate(), 3), "time": time.time()}  # fmt: skip
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._file.with_name(f".{self._file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self._file)
        except OSError as e:  # progress is a courtesy: never fail the work over it
            logger.debug("progress file %s not written: %s", self._file, e)


class _Follower:
    """Prints a run's new rank-0 log lines and mirrors its progress file as a bar (on a terminal)."""

    def __init__(self, run_dir: Path, out: TextIO, tty: bool):
        self.log = Path(run_dir) / "logs" / "rank0.log"
        self.state_file = progress_file(run_dir)
        self.out, self.tty = out, tty
        self.offset = self.log.stat().st_size if self.log.is_file() else 0  # only what this job adds
        self.partial = ""
        self.bar: Any = None
        self.bar_desc: str | None = None

    def poll(self) -> None:
        self._lines()
        if self.tty:
            self._bar()

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)

    def _lines(self) -> None:
        if not self.log.is_file():
            return
        with self.log.open("rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        self.offset += len(data)
        text = self.partial + data.decode("utf-8", errors="replace")
        *lines, self.partial = text.split("\n")
        for line in lines:
            if self.tty and f" {__name__}: " in line:
                continue  # the bar shows these
            self._write(line)

    def _bar(self) -> None:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        if state.get("desc") != self.bar_desc or state.get("done"):
            self.close_bar()
            if state.get("done"):
                return
            from tqdm import tqdm

            self.bar_desc = state.get("desc")
            self.bar = tqdm(total=state.get("total"), desc=self.bar_desc, unit=state.get("unit", "it"),
                            initial=state.get("n", 0), leave=False, dynamic_ncols=True, file=self.out)  # fmt: skip
        if self.bar is not None and state.get("n", 0) > self.bar.n:
            self.bar.update(state["n"] - self.bar.n)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.bar_desc = None, None

    def finish(self) -> None:
        self._lines()
        if self.partial:
            self._write(self.partial)
            self.partial = ""
        self.close_bar()


@contextlib.contextmanager
def follow(
    run_dir: Path | str, out: TextIO | None = None, poll_s: float = 0.5, tty: bool | None = None
) -> Iterator[None]:
    """While the block runs (typically: waiting for a submitted job), show the run's rank-0 progress on ``out``.

    Prints the lines rank 0 adds to ``RUN/logs/rank0.log`` and, when ``out`` is a terminal, a bar mirroring
    ``RUN/logs/progress.json`` (images/s, ETA). Background thread; stops and prints what is left on exit.
    """
    out = out or sys.stderr
    follower = _Follower(Path(run_dir), out, out.isatty() if tty is None else tty)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(poll_s):
            try:
                follower.poll()
            except Exception as e:  # following is a courtesy: the job's result is what matters
                logger.debug("follow %s: %s", run_dir, e)

    thread = threading.Thread(target=loop, name="cxrdist-follow", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
        follower.finish()
