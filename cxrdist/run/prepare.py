"""Prepare a run dir before any process starts: check the config, take the lock, save ``RUN/config.yaml``.

A resubmission into an existing run dir must have the same config, except for the keys that cannot change
results (:data:`RESULT_FREE_KEYS`): those changes are logged (console and ``RUN/logs/config-changes.log``) and
saved; any other difference is refused with the list, or, with ``force``, the run dir is discarded.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from omegaconf import OmegaConf

from cxrdist.config import diff_configs, load_config, save_config, to_container, validate_config
from cxrdist.data.format import read_json
from cxrdist.data.shard_fit import source_pixel_warnings
from cxrdist.run import rundir
from cxrdist.run.preflight import check_run_config

logger = logging.getLogger(__name__)


class RunDirError(ValueError):
    """A run dir that cannot be used for this config."""


# Keys that cannot change a run's results: a resubmission may change them (the change is logged and saved);
# changing any other key is refused. data.root may point at another copy of the same shards: the pinned
# data.expected_config_hash (the shard writer's config hash) must still match, and every shard's .idx checksum
# is checked against its manifest when it is opened.
RESULT_FREE_KEYS = (
    "run_dir",
    "data.root",
    "loader.workers",
    "loader.dali_threads",
    "loader.eval_batch_per_rank",
    "engine.log_every_steps",
    "engine.progress",
    "engine.ckpt_every_steps",
    "engine.ckpt_every_minutes",
    "engine.keep_last",
    "engine.keep_resume_ckpt",
    "eval.heatmap_examples",
)
RESULT_FREE_GROUPS = ("cluster.", "logger.")


def _result_free(diff_line: str) -> bool:
    key = diff_line.split(": ", 1)[0]
    return key in RESULT_FREE_KEYS or key.startswith(RESULT_FREE_GROUPS)


def _check_saved_config(cfg, run_dir: Path, force: bool) -> bool:
    """Compare with ``RUN/config.yaml``; refuse changes of results unless ``force``; True if the dir must go."""
    old = to_container(load_config(run_dir / "config.yaml"))
    if old["method"]["name"] != cfg.method.name and not force:
        raise RunDirError(
            f"{run_dir} belongs to method {old['method']['name']!r}, not {cfg.method.name!r}; choose another run_dir"
        )
    diffs = diff_configs(old, to_container(cfg))
    changes = [d for d in diffs if not _result_free(d)]
    if changes and not force:
        if old["data"]["root"] != cfg.data.root and any(d.startswith("data.expected_config_hash") for d in changes):
            changes.insert(0, f"data.root={cfg.data.root} holds other shards than {old['data']['root']}")
        raise RunDirError(
            f"{run_dir} was started with another config (differences: {'; '.join(changes)}); "
            "use a new run_dir, or --force to discard it and start over"
        )
    free = [d for d in diffs if _result_free(d) and not d.startswith(RESULT_FREE_GROUPS)]
    if free and not changes:
        logger.warning("%s: resubmitted with changes that cannot change results: %s", run_dir, "; ".join(free))
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        with open(run_dir / "logs" / "config-changes.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {'; '.join(free)}\n")
    return bool(changes)


def prepare_run(cfg, force: bool = False, lock: str | None = None, role: str = "a submission") -> Path:
    """Check the config, take the run dir (lock token ``lock``), save the resolved config; return the run dir.

    Without ``lock`` nothing is taken, but a run dir held by a live job is still refused (RunDirBusy).
    """
    validate_config(cfg)
    check_run_config(cfg)  # method options, shards, ImageNet weights: before anything is written
    shards = Path(cfg.data.root)
    if cfg.data.expected_config_hash is None:
        cfg.data.expected_config_hash = read_json(shards / "_dataset.json")["config_hash"]
    warn_source_pixels(cfg)
    run_dir = Path(cfg.run_dir)
    existed = run_dir.is_dir()
    if lock is None:
        rundir.check_lock(run_dir)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.acquire_lock(run_dir, lock, role=role)  # before anything is read or written: one job at a time
    try:
        if (run_dir / "config.yaml").is_file() and _check_saved_config(cfg, run_dir, force):
            logger.warning("--force: discarding %s (stages and checkpoints)", run_dir)
            shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            if lock is not None:
                rundir.acquire_lock(run_dir, lock, role=role)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    except BaseException:
        if lock is not None:
            rundir.release_lock(run_dir, lock)
        if not existed:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


def warn_source_pixels(cfg) -> list[str]:
    """Warn (and return) where a stage's first resize needs source pixels the shards lack (data/shard_fit.py)."""
    recipes = {name: OmegaConf.to_container(r.transforms) for name, r in cfg.method.stages.items()}
    warnings = source_pixel_warnings(cfg.data.root, recipes)
    for w in warnings:
        logger.warning("%s", w)
    return warnings
