"""SIGTERM under Slurm: hold the process until Slurm's SIGKILL, so a requeued attempt writes no result.

One behaviour for every process starter under Slurm (the submitit job, ``cxrdist.run.torchrun`` under
``slurm/train.sbatch``): SIGTERM means Slurm is ending this attempt (``scontrol requeue``, ``scancel``,
preemption, a time limit) and SIGKILL follows after KillWait. Each rank writes one line to its log, the tracker
marks the attempt preempted, and the process freezes: checkpoints are complete-only and already on disk, so
stopping anywhere loses at most the steps since the last one. What *requeues* a job before its time limit is
the launcher's (submitit's USR2 handler calling ``Job.checkpoint``; the ``USR1`` trap of ``train.sbatch``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)
SIGTERM_LINE = (
    "SIGTERM: Slurm is ending this attempt (requeue/cancel/preemption); stopping here and waiting for the kill. "
    "The next attempt resumes from the last checkpoint."
)


def write_unlocked(message: str, level: int = logging.WARNING) -> None:
    """Write one log record to the root logger's handlers by raw ``os.write``, taking no lock.

    The frozen main thread may hold any lock at the moment of SIGTERM: a handler's (it was logging), the
    stream's, W&B's console capture (rank 0's console goes through it). ``logger.warning`` from another thread
    then blocks for good and the line is lost (seen in 1 of ~20 requeues at a stage boundary, where rank 0
    logs most). A file handler's line is appended through its own descriptor (``O_APPEND``: whole lines);
    a console's goes to its stream's file descriptor, past Python's and W&B's wrappers.
    """
    record = logger.makeRecord(logger.name, level, __file__, 0, message, None, None)
    for handler in list(logging.getLogger().handlers):
        try:
            if record.levelno < handler.level or not handler.filter(record):
                continue
            data = (handler.format(record) + "\n").encode()
            if isinstance(handler, logging.FileHandler):
                fd = os.open(handler.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            elif isinstance(handler, logging.StreamHandler):
                os.write(handler.stream.fileno(), data)
        except Exception:  # noqa: S112  (a stream without a descriptor, a closed file: the other handlers still get it)
            continue


def announce_sigterm() -> None:
    """Once per process: the SIGTERM line (lock-free), then the hooks (best effort, they may block)."""
    if not _ANNOUNCED.acquire(blocking=False):
        return
    write_unlocked(SIGTERM_LINE)
    for hook in list(SIGTERM_HOOKS):  # the tracker marks its run preempted
        try:
            hook()
        except Exception as e:  # the SIGTERM line and the hold matter more than the hook
            write_unlocked(f"SIGTERM hook {hook} failed: {type(e).__name__}: {e}")


def _wakeup_reader(reader: socket.socket) -> None:
    """Thread: announce as soon as the signal's wakeup byte arrives, whatever the main thread does."""
    while True:
        data = reader.recv(64)
        if not data:
            return
        if signal.SIGTERM in data:
            announce_sigterm()


def hold_on_sigterm(max_wait_s: float = 900.0) -> None:
    """Under Slurm, make SIGTERM freeze this process until Slurm's SIGKILL (or ``max_wait_s``, then exit 143).

    submitit only logs SIGTERM and lets the job go on; a job that then failed (e.g. W&B's service process,
    killed by the same signal) or finished would write a result that submitit's watcher takes for the job's
    outcome while Slurm requeues it. submitit's USR2 handler (timeout/preemption requeue) still runs while we
    wait. The SIGTERM line is written by a thread woken through the signal's wakeup fd: a Python handler runs
    only once the main thread is back in Python, and one blocked in a collective whose peer is frozen by the
    same SIGTERM never is. The line goes first and lock-free (:func:`write_unlocked`); the hooks (the tracker's
    preempted state) come after it and may block on a lock the frozen main thread holds (best effort).
    """

    def _hold(signum: int, frame: Any) -> None:
        # The wakeup thread announces; only if it has not within 2 s (no thread: not the main thread, or
        # another library took the wakeup fd) does the handler do it itself.
        waited = time.monotonic() + 2.0
        while _SIGTERM_SOCKETS and not _ANNOUNCED.locked() and time.monotonic() < waited:
            time.sleep(0.05)
        announce_sigterm()
        deadline = time.monotonic() + max_wait_s
        while time.monotonic() < deadline:
            time.sleep(0.5)
        os._exit(128 + signum)  # no cleanup: nothing may write a result for this attempt

    signal.signal(signal.SIGTERM, _hold)
    if _SIGTERM_SOCKETS:  # a second job run in this process: the wakeup thread is there already
        return
    try:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError):  # not the main thread: the handler alone announces
        return
    _SIGTERM_SOCKETS.extend((reader, writer))  # kept open for the life of the process
    threading.Thread(target=_wakeup_reader, args=(reader,), daemon=True, name="sigterm-log").start()


_ANNOUNCED = threading.Lock()
_SIGTERM_SOCKETS: list[socket.socket] = []
SIGTERM_HOOKS: list[Callable[[], None]] = []  # called once when SIGTERM arrives (rank_session adds the tracker's)
