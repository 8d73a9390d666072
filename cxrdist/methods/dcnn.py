"""DCNN (Wang et al. 2017): ResNet-50 → transition layer → global pooling (avg, max or LSE) → 14 logits.

Heatmap = CAM over the transition layer's output. Trained with Wang's batch-weighted BCE by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrdist.engine.stages import Stage
from cxrdist.methods.base import Method, build_context_free, register_method
from cxrdist.models import build_model


@register_method("dcnn")
class DCNN(Method):
    """One training stage, then evaluation."""

    IMAGENET = ("resnet50",)

    @dataclass
    class ModelConfig:
        pretrained: bool = True  # ImageNet ResNet-50
        imagenet_weights: str = (
            "v1"  # v1: IMAGENET1K_V1, the original weights the papers used | v2: torchvision DEFAULT
        )
        pool: str = "lse"  # avg | max | lse (Wang et al. §4)
        lse_r: float = 10.0
        transition_norm: bool = False  # BatchNorm after the transition conv (choice; needed from scratch, see model)

    def build_model(self, stage: str):
        """The network of ``stage``."""
        m = self.model_cfg
        return build_model(
            "dcnn", pretrained=m.pretrained,
            imagenet_weights=m.imagenet_weights, in_chans=self.in_chans(stage), pool=m.pool, lse_r=m.lse_r,
            transition_norm=m.transition_norm,
        )  # fmt: skip

    def stages(self) -> list[Stage]:
        return self.train_and_eval("train", build_context_free(self, "train"))
