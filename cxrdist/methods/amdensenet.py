"""zhao2021 AM-DenseNet (Zhao et al., "A deep learning method for classification of chest X-ray images"):
DenseNet-121 with a CBAM after dense blocks 1–3, GAP, a 14-way linear head, trained with focal loss.

Stages: ``train`` → ``eval`` (heatmap = the CAM of the last feature map; zhao2021 has no localization).
``model.cbam_placement`` puts each CBAM before (a choice, docs/methods.md#amdensenet) or after its transition layer.

zhao2021 measured on a random 70/30 *image* split, not the official patient split: its numbers are comparable
only with a run on shards written with ``--split-scheme random-image --test-fraction 0.3`` (``published.split``).

Parameters at 14 classes, 3 input channels: 7,140,532 before the transitions (the default), 7,011,508 after.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from cxrdist.engine.stages import Stage
from cxrdist.methods.base import Method, build_context_free, register_method
from cxrdist.models import build_model
from cxrdist.models.amdensenet import PLACEMENTS

EVAL_WEIGHTS = ("best", "last")


@register_method("amdensenet")
class AMDenseNet(Method):
    """One training stage, then evaluation of its best or last model (``options.eval_weights``)."""

    IMAGENET = ("densenet121",)

    @dataclass
    class ModelConfig:
        pretrained: bool = True  # "initialized with DenseNet-121 pre-trained on the ImageNet dataset"
        imagenet_weights: str = (
            "v1"  # v1: IMAGENET1K_V1, the original weights the papers used | v2: torchvision DEFAULT
        )
        cbam_placement: str = "before_transition"  # before_transition | after_transition (docs/methods.md#amdensenet)
        reduction: int = 16  # CBAM channel-MLP r: not in zhao2021, the CBAM default

    @dataclass
    class Options:
        eval_weights: str = "last"  # best (by val) | last: zhao2021 has no validation set

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        if self.model_cfg.cbam_placement not in PLACEMENTS:
            raise ValueError(f"method.model.cbam_placement must be one of {PLACEMENTS}")
        if self.options.eval_weights not in EVAL_WEIGHTS:
            raise ValueError(f"method.options.eval_weights must be one of {EVAL_WEIGHTS}")

    def build_model(self, stage: str) -> torch.nn.Module:
        """The network of ``stage`` with the configured CBAM placement."""
        m = self.model_cfg
        return build_model(
            "amdensenet",
            pretrained=m.pretrained,
            imagenet_weights=m.imagenet_weights,
            in_chans=self.in_chans(stage),
            cbam_placement=m.cbam_placement,
            reduction=m.reduction,
        )

    def stages(self) -> list[Stage]:
        train, evaluate = self.train_and_eval("train", build_context_free(self, "train"))
        weights = f"{self.options.eval_weights}.pt"
        return [train, dataclasses.replace(evaluate, weights=lambda ctx: ctx.stage_path("train", weights))]
