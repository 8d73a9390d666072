"""Writing files: the one error for a write that failed (disk full, quota, I/O), used by every writer.

Shards (``data/``), checkpoints (``engine/``) and run-dir records (``run/``) all report a failed write the same
way: one line naming the file, "no space left on device" when the disk is full, and what was kept.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path


class WriteFailed(OSError):
    """A write that failed (disk full, quota, I/O error), naming the file and what was kept."""


def write_failure(path: str | Path, exc: BaseException, kept: str) -> WriteFailed:
    """The error for a failed write: names ``path``, says "no space left" when the disk is full, and what was kept."""
    path = Path(path)
    probe = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    full = getattr(exc, "errno", None) == errno.ENOSPC or (free is not None and free < 64 * 2**20)
    why = "no space left on device" if full else f"{type(exc).__name__}: {exc}"
    space = f" ({free / 2**20:.0f} MiB free)" if free is not None else ""
    err = WriteFailed(f"could not write {path}: {why}{space}; {kept}")
    err.errno = errno.ENOSPC if full else getattr(exc, "errno", None)
    return err
