"""guan2020 CRAL (Guan & Huang, "Multi-label chest X-ray image classification via category-wise residual
attention learning"): a ResNet-50 or DenseNet-121 backbone, category-wise residual attention (att1 or att2) on
its last feature map, and one binary classifier per class.

Stages: ``train`` → ``eval``. The heatmap of class c is the CAM of the attended features H^c with FC_c's weights
(the model's ``forward_with_maps``). Table 2's ablations are config switches: ``model.category_wise: false``
("w/o category": one attention map shared by all classes) and ``model.residual: false`` ("w/o residual":
H^c = a^c ⊙ F).

Parameters at 14 classes, 3 input channels: D-121 att1 14,054,300 (the default); D-121 att2 12,503,964;
R-50 att1 35,341,404; R-50 att2 45,618,268.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from cxrdist.engine.stages import Stage
from cxrdist.methods.base import Method, build_context_free, register_method
from cxrdist.models import build_model
from cxrdist.models.cral import ATTENTIONS

BACKBONES = ("resnet50", "densenet121")
EVAL_WEIGHTS = ("best", "last")


@register_method("cral")
class CRAL(Method):
    """One training stage, then evaluation of its best or last model (``options.eval_weights``)."""

    @dataclass
    class ModelConfig:
        pretrained: bool = True  # ImageNet backbone: not in guan2020 (choice)
        imagenet_weights: str = (
            "v1"  # v1: IMAGENET1K_V1, the original weights the papers used | v2: torchvision DEFAULT
        )
        backbone: str = "densenet121"  # resnet50 | densenet121
        attention: str = "att1"  # att1 | att2
        category_wise: bool = True  # false: Table 2 "w/o category"
        residual: bool = True  # false: Table 2 "w/o residual"

    @dataclass
    class Options:
        eval_weights: str = "last"  # best (by val) | last (epoch 30): guan2020 describes no validation set

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        m = self.model_cfg
        for key, value, known in (
            ("model.backbone", m.backbone, BACKBONES),
            ("model.attention", m.attention, ATTENTIONS),
            ("options.eval_weights", self.options.eval_weights, EVAL_WEIGHTS),
        ):
            if value not in known:
                raise ValueError(f"method.{key} must be one of {known}, got {value!r}")

    def imagenet_backbones(self) -> list[str]:
        """The configured backbone's ImageNet weights, when ``model.pretrained``."""
        return [self.model_cfg.backbone] if self.model_cfg.pretrained else []

    def build_model(self, stage: str) -> torch.nn.Module:
        """The network of ``stage`` with the configured backbone, attention and ablation switches."""
        m = self.model_cfg
        return build_model(
            "cral",
            pretrained=m.pretrained,
            imagenet_weights=m.imagenet_weights,
            in_chans=self.in_chans(stage),
            backbone=m.backbone,
            attention=m.attention,
            category_wise=m.category_wise,
            residual=m.residual,
        )

    def stages(self) -> list[Stage]:
        train, evaluate = self.train_and_eval("train", build_context_free(self, "train"))
        weights = f"{self.options.eval_weights}.pt"
        return [train, dataclasses.replace(evaluate, weights=lambda ctx: ctx.stage_path("train", weights))]
