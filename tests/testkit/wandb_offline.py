"""Reading an offline W&B run back with wandb's own reader (``wandb leet inspect``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def leet(folder: Path, summary: bool = False) -> list[dict] | dict:
    """wandb's reader of an offline run: its records (one dict each), or with ``summary`` its state and summary."""
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", *(["--summary"] if summary else []), str(folder)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    return json.loads(out) if summary else [json.loads(line) for line in out.splitlines() if line.strip()]


def logged_table(folder: Path, summary: dict, key: str) -> dict:
    """The W&B table logged as ``key`` (``columns``, ``data``), read from the run's files."""
    return json.loads((folder / "files" / summary["summary"][key]["path"]).read_text())
