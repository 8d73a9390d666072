"""SIGTERM under Slurm: hold the process until Slurm's SIGKILL, so a requeued attempt writes no result."""

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


def _announce_sigterm(reader: socket.socket, announce: Callable[[], None]) -> None:
    """Thread: log the SIGTERM line as soon as the signal's wakeup byte arrives, whatever the main thread does."""
    while True:
        data = reader.recv(64)
        if not data:
            return
        if signal.SIGTERM in data:
            announce()


def hold_on_sigterm(max_wait_s: float = 900.0) -> None:
    """Under Slurm, make SIGTERM freeze this process until Slurm's SIGKILL (or ``max_wait_s``, then exit 143).

    SIGTERM means Slurm is ending this attempt (``scontrol requeue``, ``scancel``, preemption) and SIGKILL
    follows after KillWait. submitit only logs SIGTERM and lets the job go on; a job that then failed (e.g.
    W&B's service process, killed by the same signal) or finished would write a result that submitit's
    watcher takes for the job's outcome while Slurm requeues it. Checkpoints are complete-only and already
    on disk, so stopping anywhere loses at most the steps since the last one. submitit's USR2 handler
    (timeout/preemption requeue) still runs while we wait. The SIGTERM line is logged by a thread woken through
    the signal's wakeup fd: a Python handler runs only once the main thread is back in Python, and one blocked
    in a collective whose peer is frozen by the same SIGTERM never is (the line was missing in 1 of 4 requeues).
    """
    announced = threading.Lock()

    def announce() -> None:
        if announced.acquire(blocking=False):
            logger.warning(
                "SIGTERM: Slurm is ending this attempt (requeue/cancel/preemption); stopping here and waiting "
                "for the kill. The next attempt resumes from the last checkpoint."
            )
            for handler in logging.getLogger().handlers:
                handler.flush()
            for hook in list(SIGTERM_HOOKS):  # the tracker marks its run preempted (best effort)
                try:
                    hook()
                except Exception as e:  # the SIGTERM line and the hold matter more than the hook
                    logger.warning("SIGTERM hook %s failed: %s", hook, e)

    def _hold(signum: int, frame: Any) -> None:
        announce()
        deadline = time.monotonic() + max_wait_s
        while time.monotonic() < deadline:
            time.sleep(0.5)
        os._exit(128 + signum)  # no cleanup: nothing may write a result for this attempt

    signal.signal(signal.SIGTERM, _hold)
    try:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError):  # not the main thread: the handler alone logs the line
        return
    _SIGTERM_SOCKETS.extend((reader, writer))  # kept open for the life of the process
    threading.Thread(target=_announce_sigterm, args=(reader, announce), daemon=True, name="sigterm-log").start()


_SIGTERM_SOCKETS: list[socket.socket] = []
SIGTERM_HOOKS: list[Callable[[], None]] = []  # called once when SIGTERM arrives (rank_session adds the tracker's)
