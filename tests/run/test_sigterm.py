"""SIGTERM under Slurm (``cxrdist.run.sigterm``): the line reaches the rank's log whatever locks the frozen main
thread holds, the hooks run after it, and the process freezes until the kill (here ``max_wait_s``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cxrdist.run.sigterm import SIGTERM_LINE

REPO = Path(__file__).resolve().parents[2]

# The main thread holds every log handler's lock (as when SIGTERM lands while it logs: at a stage boundary rank 0
# logs most) and stays in C with SIGTERM blocked (as in a collective whose peer is frozen by the same signal), so
# only the wakeup thread can write the line. ``logger.warning`` from that thread would wait for those locks.
_CHILD = """
import logging, os, signal, sys, threading, time
from pathlib import Path
from cxrdist.log import setup_logging
from cxrdist.run.sigterm import SIGTERM_HOOKS, SIGTERM_LINE, hold_on_sigterm

run = Path(sys.argv[1])
setup_logging(run, 0)
hold_on_sigterm(max_wait_s=1)
SIGTERM_HOOKS.append(lambda: (run / "hook-ran").write_text("yes"))
for handler in logging.getLogger().handlers:
    handler.acquire()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
check = lambda: print("line written while locked" if SIGTERM_LINE in (run / "logs" / "rank0.log").read_text()
                      else "line missing", flush=True)
threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()  # sent while the main thread is in C
threading.Timer(2.5, check).start()  # the main thread runs the Python handler only when its sleep ends
time.sleep(5)
print("not frozen", flush=True)
"""


def test_sigterm_line_needs_no_lock_held_by_the_main_thread(tmp_path: Path):
    """The line is in the rank's file (once, formatted like every record) and on the console within 3 s although
    the main thread holds the handlers' locks; the hook ran; the process then freezes and exits 143."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 128 + 15, out.stderr
    assert out.stdout.strip() == "line written while locked", out.stdout + out.stderr
    lines = [line for line in (tmp_path / "logs" / "rank0.log").read_text().splitlines() if SIGTERM_LINE in line]
    assert len(lines) == 1 and " WARNING [rank0] cxrdist.run.sigterm: SIGTERM: " in lines[0], lines
    assert out.stderr.count(SIGTERM_LINE) == 1, out.stderr
    assert (tmp_path / "hook-ran").read_text() == "yes"


def test_sigterm_announced_by_the_handler_without_the_thread(tmp_path: Path):
    """Where no wakeup thread can be started (``hold_on_sigterm`` called off the main thread, so Python refuses
    ``set_wakeup_fd``), the handler writes the line and the hooks itself."""
    child = (
        "import os, signal, sys, time\n"
        "from pathlib import Path\n"
        "from cxrdist.log import setup_logging\n"
        "from cxrdist.run import sigterm\n"
        "run = Path(sys.argv[1])\n"
        "setup_logging(run, 1)\n"
        "signal.set_wakeup_fd = lambda *a, **k: (_ for _ in ()).throw(ValueError('not the main thread'))\n"
        "sigterm.hold_on_sigterm(max_wait_s=1)\n"
        "assert not sigterm._SIGTERM_SOCKETS\n"
        "sigterm.SIGTERM_HOOKS.append(lambda: (run / 'hook-ran').write_text('yes'))\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(30)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 128 + 15, out.stderr
    assert (tmp_path / "logs" / "rank1.log").read_text().count(SIGTERM_LINE) == 1
    assert (tmp_path / "hook-ran").read_text() == "yes"
