"""ma2019 multi-attention network (Ma et al., "Multi-attention network for thoracic disease classification and
localization"): SE-ResNet-101 (feature attention) + space attention + a classifier applied per position, trained
with the two-stage hard-example attention.

Stages:

- ``base``: train on set A (the train split).
- ``mine``: the base model scores every training image with the eval transform (distributed ScoreStage); set B
  (the hard positive images, see :func:`hard_examples`) is written as the key list ``hard_keys.txt``, with its
  size per class in DONE.json.
- ``retrain``: train on C = A + B (B's images twice per epoch, via the loader's ``oversample_keys``), from the
  ImageNet init (``options.retrain_init: imagenet``, choice) or from ``base`` (``base``).
- ``eval``: test AUROC of retrain's best model; the bbox heatmap is the per-position score map (ma2019 Fig. 4).

Parameters at 14 classes, 3 input channels: 47,335,230 (SE-ResNet-101 features 47,277,872 + 4096·14 + 14).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from scipy.special import expit

from cxrdist.data.loaders.base import BaseLoader
from cxrdist.data.sidecar import write_key_list
from cxrdist.engine.checkpoint import load_model_weights
from cxrdist.engine.stages import ScoreStage, Stage, StageContext, TrainStage
from cxrdist.labels import LABELS
from cxrdist.methods.base import Method, build_context_free, register_method
from cxrdist.models import build_model

# ma2019 §3.3: "We set the threshold as 0.5. If the predicted score of a disease is greater than 0.5, we will
# consider that this sample has the corresponding disease."
THRESHOLD = 0.5
# image: ≥ 1 false-negative class (docs/methods.md); differs: the literal "positive samples whose prediction is
# different from the label" (a false positive on an image with some positive label counts too).
GRANULARITIES = ("image", "differs")
RETRAIN_INITS = ("imagenet", "base")
HARD_KEYS = "hard_keys.txt"


def hard_examples(labels: np.ndarray, logits: np.ndarray, granularity: str = "image") -> np.ndarray:
    """Which scored images belong to set B (boolean, one per row).

    A class is predicted iff sigmoid(logit) > 0.5 (computed in float64, so a logit just above 0 is not rounded
    to a score of exactly 0.5). Only images with at least one positive label can be in B, so "No Finding"
    images never are, whatever the granularity.

    Args:
        labels: (N, 14) 0/1 labels.
        logits: (N, 14) logits of the base model.
        granularity: one of :data:`GRANULARITIES`.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"hard_granularity must be one of {GRANULARITIES}, got {granularity!r}")
    positive = np.asarray(labels).astype(bool)
    predicted = expit(np.asarray(logits, dtype=np.float64)) > THRESHOLD
    if granularity == "image":
        return (positive & ~predicted).any(axis=1)
    return positive.any(axis=1) & (positive != predicted).any(axis=1)


def write_hard_examples(
    ctx: StageContext, placed: dict[str, Any] | None, loader: BaseLoader, granularity: str
) -> dict[str, Any]:
    """ScoreStage ``finish`` of ``mine``: rank 0 holds every rank's logits (in split order) and writes B.

    B is the union over ranks by construction (each training image is scored exactly once, on some rank, and
    gathered); the key list holds each key once. Returns B's size, per class, for DONE.json.
    """
    if placed is None:  # not rank 0: nothing to write
        return {}
    labels = loader.reader.labels.astype(bool)
    logits = placed["logits"]
    hard = hard_examples(labels, logits, granularity)
    write_key_list(ctx.stage_dir / HARD_KEYS, [loader.reader.keys[i] for i in np.flatnonzero(hard)])
    false_neg = labels & ~(expit(logits.astype(np.float64)) > THRESHOLD)
    outputs = {
        "hard_keys": HARD_KEYS,
        "granularity": granularity,
        "threshold": THRESHOLD,
        "num_scored": len(labels),
        "num_positive_images": int(labels.any(axis=1).sum()),
        "num_hard": int(hard.sum()),
        # B's images labelled with each class: the positives C gains per class.
        "per_class": {name: int(labels[hard, c].sum()) for c, name in enumerate(LABELS)},
        "false_negatives_per_class": {name: int(false_neg[hard, c].sum()) for c, name in enumerate(LABELS)},
    }
    ctx.tracker.log({"num_hard": outputs["num_hard"]}, step=0, prefix="mine")
    return outputs


def init_from_base(ctx: StageContext, model: torch.nn.Module) -> None:
    """``retrain_init: base``: start stage 2 from the base model's best weights."""
    load_model_weights(ctx.stage_path("base", "best.pt"), model)


@register_method("ma")
class MultiAttention(Method):
    """base → mine → retrain → eval (module docstring)."""

    IMAGENET = ("resnet101",)  # the ResNet part of SE-ResNet-101 (ma2019 §4.1)

    @dataclass
    class ModelConfig:
        pretrained: bool = True  # ImageNet ResNet-101 weights in the ResNet part (ma2019 §4.1); SE blocks random
        imagenet_weights: str = (
            "v1"  # v1: IMAGENET1K_V1, the original weights the papers used | v2: torchvision DEFAULT
        )

    @dataclass
    class Options:
        hard_granularity: str = "image"  # image | differs (choice: docs/methods.md#ma)
        retrain_init: str = "imagenet"  # imagenet | base (choice)

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        if self.options.hard_granularity not in GRANULARITIES:
            raise ValueError(f"method.options.hard_granularity must be one of {GRANULARITIES}")
        if self.options.retrain_init not in RETRAIN_INITS:
            raise ValueError(f"method.options.retrain_init must be one of {RETRAIN_INITS}")

    def build_model(self, stage: str) -> torch.nn.Module:
        """The network of ``stage`` (fresh, with the ImageNet weights when ``model.pretrained``)."""
        m = self.model_cfg
        return build_model(
            "ma", pretrained=m.pretrained, in_chans=self.in_chans(stage), imagenet_weights=m.imagenet_weights
        )

    def stages(self) -> list[Stage]:
        base = self.recipe("base")
        mine = ScoreStage(
            "mine",
            build_context_free(self, "base"),
            weights=lambda ctx: ctx.stage_path("base", "best.pt"),
            split="train",
            transforms=lambda ctx: base.transforms,  # a ScoreStage reads the eval ops (docs/methods.md#ma)
            finish=partial(write_hard_examples, granularity=self.options.hard_granularity),
        )
        retrain = self.train_and_eval(
            "retrain",
            build_context_free(self, "retrain"),
            init_from=init_from_base if self.options.retrain_init == "base" else None,
            loader_extras=lambda ctx: {"oversample_keys": str(ctx.stage_path("mine", HARD_KEYS))},
        )
        return [TrainStage("base", base, build_context_free(self, "base")), mine, *retrain]
