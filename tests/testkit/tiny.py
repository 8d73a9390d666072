"""Tiny classifiers (BN-free, and with BatchNorm) and stage lists for fast, exact engine tests (importable by spawned
ranks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from torch import nn

from cxrdist.config import compose, to_container
from cxrdist.dist import local_rank_env
from cxrdist.engine.pipeline import run_stages
from cxrdist.engine.stages import EvalStage, StageContext, TrainStage
from cxrdist.models.base import Classifier
from cxrdist.run.local import run_local
from cxrdist.run.session import rank_session

SIZE_OPS = "[{op: resize, size: 40}, {op: center_crop, size: 32}]"
TRAIN_OPS = "[{op: resize, size: 40}, {op: random_resized_crop, size: 32, scale: [0.5, 1.0]}, {op: hflip}]"
# A method run trimmed to one step of batch 8 at 32 px (launcher and sweep tests): TINY_RUN + extras + TINY_SIZE.
TINY_RUN = [
    "method.model.pretrained=false",
    "method.stages.train.epochs=1",
    "method.stages.train.max_steps_per_epoch=1",
    "method.stages.train.global_batch=8",
    "loader.workers=0",
    "logger=none",
]
TINY_SIZE = [f"method.stages.train.transforms.train={SIZE_OPS}", f"method.stages.train.transforms.eval={SIZE_OPS}"]


class TinyNet(Classifier):
    """conv-relu-conv-relu → per-position 14-way scores; logits = their spatial mean (no BN: exact parity)."""

    num_classes = 14

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU())
        self.score = nn.Conv2d(16, 14, 1)

    def forward_with_maps(self, x):
        maps = self.score(self.body(x))
        return maps.mean((2, 3)), maps


class TinyBNNet(TinyNet):
    """TinyNet with a BatchNorm after each conv: exercises synchronised BatchNorm."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )


NETS = {"tiny": TinyNet, "tiny_bn": TinyBNNet}


def tiny_cfg(shards: Path, run_dir: Path, *extra: str):
    """A chexnet config trimmed for the tiny net: 32 px, global batch 16, SGD, 2 epochs."""
    return compose(
        [
            "method=chexnet",
            f"data.root={shards}",
            f"run_dir={run_dir}",
            "logger=none",
            "loader.workers=0",
            "method.model.pretrained=false",
            "method.stages.train.epochs=2",
            "method.stages.train.global_batch=16",
            "method.stages.train.optim.name=sgd",
            "method.stages.train.optim.lr=0.05",
            f"method.stages.train.transforms.train={TRAIN_OPS}",
            f"method.stages.train.transforms.eval={SIZE_OPS}",
            "engine.ckpt_every_steps=2",
            "engine.log_every_steps=1",
            "eval.heatmap_examples=1",
            *extra,
        ]
    )


def tiny_stages(cfg):
    """Train the tiny net with the chexnet recipe of ``cfg`` (no eval stage)."""
    return [TrainStage("train", cfg.method.stages.train, lambda ctx: TinyNet())]


def tiny_bn_stages(cfg):
    """Train the tiny BatchNorm net (no eval stage)."""
    return [TrainStage("train", cfg.method.stages.train, lambda ctx: TinyBNNet())]


def tiny_stages_with_eval(cfg):
    """Train, then the final evaluator."""
    recipe = cfg.method.stages.train
    return [
        TrainStage("train", recipe, lambda ctx: TinyNet()),
        EvalStage(
            "eval",
            lambda ctx: TinyNet(),
            weights=lambda ctx: ctx.stage_path("train", "best.pt"),
            transforms=lambda ctx: recipe.transforms,
            maps=lambda m, b: m.forward_with_maps(b["image"]),
        ),
    ]


def invariance_worker(rank: int, world: int, port: int, shards: str, root: str, cases: list) -> None:
    """One rank of the invariance test: train every ``(name, net, overrides)`` case in one process group.

    Each case writes ``root/<name>/w<world>/stages/00_train/last.pt``; one session (logging, process group) serves
    all cases so that the ranks start once per world size.
    """
    os.environ.update(local_rank_env(rank, world, port))
    base = tiny_cfg(Path(shards), Path(root) / "session")
    with rank_session(to_container(base), str(Path(root) / f"session-w{world}")) as session:
        for name, net, overrides in cases:
            run_dir = Path(root) / name / f"w{world}"
            cfg = tiny_cfg(Path(shards), run_dir, *overrides)
            ctx = StageContext(cfg=cfg, run_dir=run_dir, env=session.env, tracker=session.tracker)
            run_stages(ctx, [TrainStage("train", cfg.method.stages.train, lambda ctx, n=net: NETS[n]())])


if __name__ == "__main__":  # the kill-and-resume test: python -m testkit.tiny SHARDS RUN_DIR NPROC [overrides]
    shards, run_dir, nproc = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    run_local(tiny_cfg(shards, run_dir, *sys.argv[4:]), nproc=nproc, stages_fn=tiny_stages)
