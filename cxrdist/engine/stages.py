"""Method-agnostic stage kinds, as plain data; ``methods/`` composes them, ``pipeline.py`` runs them.

A stage owns ``RUN/stages/NN_name/``; it reads an earlier stage's artifacts by path (``ctx.stage_path``) and
returns its outputs, which the pipeline writes to ``DONE.json``. A stage only describes the work (what to build,
which weights, which split); ``pipeline.run_stage`` dispatches it to the trainer, inference or the evaluator, so
this module imports none of them. Kinds: :class:`TrainStage` (the trainer),
:class:`ScoreStage` (distributed inference over a split whose gathered result a function turns into
artifacts), :class:`EvalStage` (the final evaluator), :class:`FunctionStage` (any other collective step, e.g.
training an auxiliary network or writing a sidecar).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from cxrdist.data.loaders.base import BaseLoader, LoaderSpec
from cxrdist.data.loaders.factory import build_loader
from cxrdist.dist import DistEnv
from cxrdist.log import Tracker
from cxrdist.progress import Progress, progress_file

ModelBuilder = Callable[["StageContext"], torch.nn.Module]
Forward = Callable[[torch.nn.Module, dict[str, Any]], torch.Tensor]


def default_forward(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """logits = model(image)."""
    return model(batch["image"])


@dataclass
class StageContext:
    """What a running stage may use: config, run/stage dirs, the dist env, the tracker."""

    cfg: DictConfig
    run_dir: Path
    env: DistEnv
    tracker: Tracker
    stage_dir: Path = Path(".")
    stage_dirs: dict[str, Path] = field(default_factory=dict)  # every stage's dir, by name

    def progress(self, total: int | None, desc: str, unit: str = "img", initial: int = 0) -> Progress:
        """A progress meter of rank 0 (``engine.progress``): a bar on a terminal, else log lines; both also go
        to ``RUN/logs/progress.json`` for a console that follows the run (see cxrdist/progress.py)."""
        on = bool(self.env.is_main and self.cfg.engine.progress)
        file = progress_file(self.run_dir) if on else None
        return Progress(total, desc, unit, enabled=on, file=file, initial=initial)

    def stage_path(self, stage: str, *parts: str) -> Path:
        """Path of an artifact of stage ``stage`` (which must be part of this method)."""
        if stage not in self.stage_dirs:
            raise KeyError(f"no stage {stage!r} in this method (stages: {list(self.stage_dirs)})")
        return self.stage_dirs[stage].joinpath(*parts)

    def loader_spec(
        self,
        *,
        split: str,
        train: bool,
        transforms: DictConfig,
        batch: int,
        accum: int = 1,
        max_steps: int | None = None,
        **extras: Any,
    ) -> LoaderSpec:
        """A LoaderSpec from the config for ``split`` with a recipe's transforms."""
        ops = transforms.train if train else transforms.eval
        return LoaderSpec(
            root=self.cfg.data.root,
            split=split,
            train=train,
            batch_per_rank=batch,
            accum=accum,
            ops=[dict(o) for o in ops],
            normalize=transforms.normalize,
            channels=transforms.channels,
            seed=self.cfg.seed,
            workers=self.cfg.loader.workers,
            resample=self.cfg.loader.resample,
            max_steps=max_steps,
            expected_config_hash=self.cfg.data.expected_config_hash,
            **extras,
        )

    def make_loader(self, spec: LoaderSpec) -> BaseLoader:
        """Build a loader on this rank's slice of the data."""
        return build_loader(
            self.cfg.loader.backend,
            spec,
            world_size=self.env.world_size,
            rank=self.env.rank,
            device=self.env.device,
            dali_threads=self.cfg.loader.dali_threads,
        )

    def build_loader(
        self, stage: TrainStage, *, train: bool, micro: int = 0, accum: int = 1, split: str | None = None
    ) -> BaseLoader:
        """The train loader (``stage.split``, key lists, sidecars) or an evaluation loader of a train stage."""
        extras = {k: v for k, v in stage.loader_extras(self).items() if train or k == "sidecars"}
        spec = self.loader_spec(
            split=stage.split if train else (split or "val"),
            train=train,
            transforms=stage.recipe.transforms,
            batch=micro if train else self.cfg.loader.eval_batch_per_rank,
            accum=accum,
            max_steps=stage.recipe.max_steps_per_epoch if train else None,
            **extras,
        )
        return self.make_loader(spec)


class Stage:
    """A named step of a method with an on-disk contract (its dir, its artifacts, DONE.json)."""

    name: str


@dataclass
class TrainStage(Stage):
    """Train a network with a recipe; writes ``best.pt`` (best by val) and ``last.pt``. ``hooks``
    (``engine.train_hooks.TrainHooks``; None: a classifier on the shards) say what a batch, the loss and the
    validation are."""

    name: str
    recipe: DictConfig
    build_model: ModelBuilder
    forward: Forward = default_forward
    split: str = "train"
    init_from: Callable[[StageContext, torch.nn.Module], None] | None = None
    # (ctx) -> dict of LoaderSpec extras: restrict_keys / oversample_keys / sidecars (paths of earlier stages)
    loader_extras: Callable[[StageContext], dict[str, Any]] = lambda ctx: {}
    hooks: Any = None


@dataclass
class FunctionStage(Stage):
    """Any other collective step: ``fn(ctx) -> outputs``."""

    name: str
    fn: Callable[[StageContext], dict[str, Any]]


@dataclass
class ScoreStage(Stage):
    """Distributed inference of a trained model over a split; ``finish(ctx, placed)`` writes the artifacts.

    ``placed`` (rank 0 only; None elsewhere) holds the split's logits (and maps when ``with_maps``) in split
    order; ``finish`` runs on every rank so it may write sidecars collectively.
    """

    name: str
    build_model: ModelBuilder
    weights: Callable[[StageContext], Path]
    split: str
    transforms: Callable[[StageContext], DictConfig]
    finish: Callable[[StageContext, dict[str, Any] | None, BaseLoader], dict[str, Any]]
    forward: Forward = default_forward
    loader_extras: Callable[[StageContext], dict[str, Any]] = lambda ctx: {}


@dataclass
class EvalStage(Stage):
    """The final evaluation of a trained model on the configured splits (test AUROC, bbox localization)."""

    name: str
    build_model: ModelBuilder
    weights: Callable[[StageContext], Path]
    transforms: Callable[[StageContext], DictConfig]
    maps: Callable[[torch.nn.Module, dict[str, Any]], tuple[torch.Tensor, torch.Tensor]]
    loader_extras: Callable[[StageContext], dict[str, Any]] = lambda ctx: {}
    published: dict[str, Any] = field(default_factory=dict)
