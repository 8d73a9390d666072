"""The two baselines every paper compares with: ``dcnn`` (Wang et al. 2017) and ``chexnet`` (Rajpurkar et al.)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cxrdist.labels import NUM_LABELS
from cxrdist.models.backbones import build_backbone
from cxrdist.models.base import Classifier
from cxrdist.models.cam import class_activation_maps
from cxrdist.models.heads import POOLS, global_pool
from cxrdist.models.registry import register_model


class DCNN(Classifier):
    """Wang et al. 2017 (ChestX-ray8) DCNN: backbone → transition conv → global pooling → linear.

    Wang et al. (as described by zhao2021 and docs/methods.md#dcnn) remove the classifier and add "a transition
    layer, a global pooling layer, a prediction layer". The transition is a plain conv to 1024 channels,
    3×3 with padding 1, no norm or activation: kernel, width and the absence of a nonlinearity are choices
    (none of the five papers gives them). ``transition_norm`` adds a BatchNorm after the conv (also a choice):
    the plain conv has a fan-in of 18,432 and no normalisation after it, and Adam 1e-3 on a random backbone
    blows its output up (measured on the phantom: first-epoch loss twice chexnet's, test AUROC 0.54 after 5
    epochs). The heatmap is the CAM over the transition output.
    """

    def __init__(
        self,
        features: nn.Module,
        num_features: int,
        num_classes: int = NUM_LABELS,
        pool: str = "lse",
        lse_r: float = 10.0,
        transition_channels: int = 1024,
        transition_kernel: int = 3,
        transition_norm: bool = False,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pooling {pool!r} (known: {', '.join(POOLS)})")
        self.num_classes = num_classes
        self.pool, self.lse_r = pool, lse_r
        self.features = features
        conv = nn.Conv2d(num_features, transition_channels, transition_kernel, padding=transition_kernel // 2)
        self.transition = nn.Sequential(conv, nn.BatchNorm2d(transition_channels)) if transition_norm else conv
        self.fc = nn.Linear(transition_channels, num_classes)

    def forward_with_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return logits (B, K) and the CAMs of the transition output (B, K, h, w)."""
        t = self.transition(self.features(x))
        logits = self.fc(global_pool(t, self.pool, self.lse_r))
        return logits, class_activation_maps(t, self.fc.weight)


class DenseNetClassifier(Classifier):
    """DenseNet features (ending in ReLU) → GAP → ``classifier`` Linear; heatmap = CAM.

    The parameter names are torchvision's (``features.*``, ``classifier.*``), so a torchvision DenseNet state
    dict with a K-way classifier loads as is.
    """

    def __init__(self, features: nn.Module, num_features: int, num_classes: int = NUM_LABELS) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = features
        self.classifier = nn.Linear(num_features, num_classes)

    def forward_with_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return logits (B, K) and CAMs (B, K, h, w)."""
        f = self.features(x)
        logits = self.classifier(F.adaptive_avg_pool2d(f, 1).flatten(1))
        return logits, class_activation_maps(f, self.classifier.weight)


@register_model("dcnn")
def build_dcnn(
    pretrained: bool = False,
    in_chans: int = 3,
    num_classes: int = NUM_LABELS,
    backbone: str = "resnet50",
    pool: str = "lse",
    lse_r: float = 10.0,
    transition_kernel: int = 3,
    transition_norm: bool = False,
    imagenet_weights: str = "v1",
) -> DCNN:
    """Build the Wang et al. 2017 DCNN: ResNet-50, transition conv, LSE pooling (r = 10) by default.

    LSE with r = 10 is Wang et al.'s own pooling (not among the five papers here, so a choice to record);
    ``pool="avg"`` makes the logits exactly the spatial mean of the CAMs plus bias.

    42,397,774 parameters at 14 classes, 3 input channels (ResNet-50 features 23,508,032 + transition
    2048·1024·9 + 1024 + linear 1024·14 + 14); with ``transition_kernel=1``: 25,620,558; ``transition_norm``
    adds the BatchNorm's 2·1024.
    """
    features, num_features = build_backbone(backbone, pretrained, in_chans, imagenet_weights)
    return DCNN(
        features, num_features, num_classes, pool=pool, lse_r=lse_r,
        transition_kernel=transition_kernel, transition_norm=transition_norm,
    )  # fmt: skip


@register_model("chexnet")
def build_chexnet(
    pretrained: bool = False, in_chans: int = 3, num_classes: int = NUM_LABELS, imagenet_weights: str = "v1"
) -> DenseNetClassifier:
    """Build CheXNet: DenseNet-121 with a 14-way linear head (guan2020: "replaces the last fully connected
    layer with a 14-output fully connected layer").

    6,968,206 parameters at 14 classes, 3 input channels (= torchvision ``densenet121(num_classes=14)``).
    """
    features, num_features = build_backbone("densenet121", pretrained, in_chans, imagenet_weights)
    return DenseNetClassifier(features, num_features, num_classes)
