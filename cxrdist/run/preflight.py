"""Checks a run passes before anything exists: no run dir, no W&B run, no job, no spawned process yet.

Everything a user can get wrong on the command line is looked at here — the shard root, the splits, the ImageNet
weights a ``pretrained`` model needs, a run dir to evaluate or report on, the evaluation's stage — and each
failure is a one-line :class:`~cxrdist.cli.UsageError` saying what to change (see ``cxrdist/cli.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cxrdist.cli import UsageError
from cxrdist.config import load_config
from cxrdist.data.nih import SPLITS
from cxrdist.dist import DistEnv
from cxrdist.engine.pipeline import stage_dirs
from cxrdist.engine.stages import EvalStage, StageContext
from cxrdist.log import Tracker
from cxrdist.methods import get_method
from cxrdist.models.backbones import ensure_imagenet_weights
from cxrdist.run.external import check_external_dir, check_name

logger = logging.getLogger(__name__)
TRAIN_SPLITS = ("train", "val")


def check_shard_root(root: Any, splits: Iterable[str] = SPLITS) -> Path:
    """``data.root`` must be a finished shard root holding ``splits``; return it as a Path."""
    if root is None or not str(root).strip():
        raise UsageError("data.root is empty; set data.root=<the --out folder of launch/write_shards.py>")
    path = Path(str(root))
    hint = "write shards there with launch/write_shards.py, or point data.root=<folder> at a shard root"
    if not path.is_dir():
        raise UsageError(f"data.root={root}: no such folder; {hint}")
    if not (path / "_dataset.json").is_file():
        what = "is empty" if not any(path.iterdir()) else "has no _dataset.json: it is not a shard root"
        raise UsageError(f"data.root={root} {what}; {hint}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise UsageError(f"unknown split(s) {', '.join(unknown)}; the shard splits are {', '.join(SPLITS)}")
    missing = [s for s in splits if not (path / s / "_info.json").is_file()]
    if missing:
        raise UsageError(
            f"data.root={root}: split(s) {', '.join(missing)} unfinished (no _info.json); rerun launch/write_shards.py "
            "with the same flags to finish them"
        )
    return path


def check_external_shards(shards: str, splits: Iterable[str]) -> None:
    """``--shards``: a finished shard root whose ``splits`` hold samples (an external set has no bbox split)."""
    try:
        path = check_shard_root(shards, splits)
    except UsageError as e:
        raise UsageError(str(e).replace("data.root=", "--shards ")) from None
    empty = [s for s in splits if json.loads((path / s / "_info.json").read_text())["num_samples"] == 0]
    if empty:
        raise UsageError(f"--shards {shards}: split(s) {', '.join(empty)} hold no samples; choose another --split")


def check_weights(method: Any) -> None:
    """The ImageNet weights of every backbone the method's config loads are cached (downloaded now if not)."""
    version = getattr(method.model_cfg, "imagenet_weights", "v1")
    for name in method.imagenet_backbones():
        try:
            ensure_imagenet_weights(name, version)
        except RuntimeError as e:
            raise UsageError(f"method {method.name}, model.pretrained=true: {e}") from None


def check_run_config(cfg: Any) -> Any:
    """What a training run needs before its run dir is created: valid method options, the shards of the splits
    it trains and evaluates on, and its ImageNet weights. Returns the Method instance."""
    check_shard_root(cfg.data.root, [*TRAIN_SPLITS, *(s for s in cfg.eval.splits if s not in TRAIN_SPLITS)])
    method = get_method(cfg.method.name)(cfg)  # validates method.model / method.options
    check_weights(method)
    return method


def check_run_dir(run_dir: Path, what: str = "evaluate") -> Path:
    """An existing cxrdist run dir (one with ``config.yaml``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run dir; give the run_dir of a run to {what}")
    if not (run_dir / "config.yaml").is_file():
        raise UsageError(f"{run_dir}: not a cxrdist run dir (no config.yaml); give the run_dir of a run to {what}")
    return run_dir


def check_eval_request(
    run_dir: Path,
    splits: list[str],
    stage: str | None,
    nproc: int,
    shards: str | None = None,
    name: str | None = None,
) -> Path:
    """``launch/evaluate.py``'s arguments: run dir, splits (known, and present in the run's shards or in
    ``shards``, an external shard root, with samples), ``name`` (the external results' folder: a plain name, not
    holding another shard set's results), the stage whose model is evaluated (finished, its weights on disk) and
    the process count. Returns the weights file."""
    if nproc < 1:
        raise UsageError(f"--nproc must be ≥ 1, got {nproc}")
    if name is not None:
        if shards is None:
            raise UsageError(f"--name {name}: names an external evaluation's folder; give --shards too")
        check_name(name)
    check_run_dir(run_dir)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        known = ", ".join(SPLITS)
        raise UsageError(f"unknown split(s) {', '.join(unknown)}; choose from {known} (--split, repeatable)")
    cfg = load_config(Path(run_dir) / "config.yaml")
    if shards is None:
        check_shard_root(cfg.data.root, splits)
    else:
        check_external_shards(shards, splits)
        check_external_dir(Path(run_dir), shards, name)
    stages = get_method(cfg.method.name)(cfg).stages()
    ctx = StageContext(cfg=cfg, run_dir=Path(run_dir), env=DistEnv(), tracker=Tracker())
    ctx.stage_dirs = stage_dirs(Path(run_dir), stages)
    final = next((s for s in reversed(stages) if isinstance(s, EvalStage)), None)
    if final is None:
        raise UsageError(f"method {cfg.method.name} has no evaluation stage")
    if stage is not None:
        if stage not in ctx.stage_dirs:
            names = ", ".join(ctx.stage_dirs)
            raise UsageError(f"--stage {stage}: method {cfg.method.name} has no such stage (its stages: {names})")
        weights = ctx.stage_dirs[stage] / "best.pt"
    else:
        weights = final.weights(ctx)
    if not Path(weights).is_file():
        raise UsageError(f"{weights} does not exist: that stage has not finished; run the method first (or --stage)")
    return Path(weights)
