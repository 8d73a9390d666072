"""Where ``launch/evaluate.py RUN --shards S`` writes: ``RUN/eval/external/<name>``, one folder per shard set.

The default name is the shard set's dataset, then each writer option that changes its labels or images and differs
from the writer's default (``chexpert``, ``chexpert_uncertain-ones``, ``padchest_window16-percentile_min-age-0``), so
CheXpert under U-Ignore and under U-Ones land side by side; ``--name`` picks another. Re-evaluating the same shard set
(same ``config_hash``: same writer options and source CSVs) reuses its folder; a folder that holds another shard set's
results is refused (one line) instead of overwritten. The W&B keys (``eval/external/<name>/...``) and the report's
external columns use the same name.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from cxrdist.cli import UsageError
from cxrdist.data.writer import WriterConfig

# Options in the default name when not at their default, and the datasets each applies to (None: all).
NAMED_OPTIONS: dict[str, tuple[str, ...] | None] = {
    "views": None,
    "uncertain": ("chexpert", "mimic"),
    "window16": ("padchest",),
    "min_age": ("padchest",),
}
OTHER_OPTIONS = ("size", "quality")  # in the name suggested when the default one is taken by another shard set
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def shard_header(shards: str | Path) -> dict[str, Any]:
    """A shard root's ``_dataset.json``."""
    return json.loads((Path(shards) / "_dataset.json").read_text())


def external_name(header: dict[str, Any], more: bool = False) -> str:
    """The default name of an evaluation on the shard set ``header`` describes (``more``: also size and quality)."""
    dataset = header.get("dataset", "nih")
    cfg = header.get("config", {})
    defaults = {f.name: f.default for f in fields(WriterConfig)}
    keys = [k for k, only in NAMED_OPTIONS.items() if only is None or dataset in only]
    keys += list(OTHER_OPTIONS) if more else []
    parts = [f"{k.replace('_', '-')}-{cfg[k]}" for k in keys if k in cfg and cfg[k] != defaults[k]]
    return "_".join([dataset, *parts])


def check_name(name: str) -> str:
    """A ``--name`` usable as one folder under ``RUN/eval/external`` (and in W&B keys)."""
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"--name {name!r}: use 1-100 letters, digits, '.', '_', '+' or '-', starting with a letter or "
                         "digit (it names the folder RUN/eval/external/<name>)")  # fmt: skip
    return name


def external_eval_dir(run_dir: Path, shards: str | Path, name: str | None = None) -> Path:
    """``RUN/eval/external/<name>``: ``name`` (checked) or the shard set's default name."""
    return Path(run_dir) / "eval" / "external" / (external_name(shard_header(shards)) if name is None else
                                                  check_name(name))  # fmt: skip


def _same_set(old: dict[str, Any], header: dict[str, Any], shards: str | Path) -> bool:
    if "shards_config_hash" in old:
        return old["shards_config_hash"] == header.get("config_hash")
    return Path(str(old.get("shards", ""))).resolve() == Path(shards).resolve()  # written before the hash was kept


def check_external_dir(run_dir: Path, shards: str | Path, name: str | None = None) -> Path:
    """The folder an evaluation on ``shards`` writes; refuses one whose results are of another shard set."""
    header = shard_header(shards)
    out = external_eval_dir(run_dir, shards, name)
    for path in sorted(out.glob("*/metrics.json")):
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise UsageError(f"{path}: unreadable ({e}); remove it or give another --name") from None
        if not _same_set(old, header, shards):
            full = external_name(header, more=True)
            suggest = full if full != out.name else f"{out.name}-{str(header.get('config_hash', 'new'))[:8]}"
            raise UsageError(f"{out} holds the evaluation of another shard set ({old.get('shards', '?')}); "
                             f"--shards {shards} would overwrite it: give it its own --name (e.g. --name {suggest}) "
                             "or remove that folder")  # fmt: skip
    return out
