"""CheXNet (Rajpurkar et al. 2017): DenseNet-121 → GAP → Linear(1024, 14); heatmap = CAM.

Parameters at 14 classes, 3 input channels: 6,968,206 (torchvision densenet121 with a 14-way head).
"""

from __future__ import annotations

from dataclasses import dataclass

from cxrdist.engine.stages import Stage
from cxrdist.methods.base import Method, build_context_free, register_method
from cxrdist.models import build_model


@register_method("chexnet")
class CheXNet(Method):
    """One training stage, then evaluation."""

    IMAGENET = ("densenet121",)

    @dataclass
    class ModelConfig:
        pretrained: bool = True  # ImageNet DenseNet-121
        imagenet_weights: str = (
            "v1"  # v1: IMAGENET1K_V1, the original weights the papers used | v2: torchvision DEFAULT
        )

    def build_model(self, stage: str):
        """The network of ``stage``."""
        m = self.model_cfg
        return build_model(
            "chexnet", pretrained=m.pretrained, in_chans=self.in_chans(stage), imagenet_weights=m.imagenet_weights
        )

    def stages(self) -> list[Stage]:
        return self.train_and_eval("train", build_context_free(self, "train"))
