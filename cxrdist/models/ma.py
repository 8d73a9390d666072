"""ma2019 multi-attention network: SE-ResNet-101 (feature attention) + space attention + per-position head."""

from __future__ import annotations

from torch import Tensor, nn

from cxrdist.labels import NUM_LABELS
from cxrdist.models.attention import SpaceAttention
from cxrdist.models.backbones import build_backbone
from cxrdist.models.base import Classifier
from cxrdist.models.registry import register_model


class MultiAttentionNet(Classifier):
    """SE-ResNet-101 res5c map → space attention (C → 2C) → 1×1-conv classifier per position → average.

    ma2019 Fig. 4: the classifier is applied "with the average pooling operation in the end", and "Heatmaps
    are computed from the model without the last average pooling": so the heatmap is the per-position score
    map and the logits are its spatial mean (for a linear classifier the same logits as GAP → FC,
    docs/methods.md#ma).
    """

    def __init__(self, features: nn.Module, num_features: int, num_classes: int = NUM_LABELS) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = features
        self.space_attention = SpaceAttention()
        self.classifier = nn.Conv2d(2 * num_features, num_classes, 1)

    def forward_with_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return logits (B, K) = mean of the score map, and the score map (B, K, h, w)."""
        scores = self.classifier(self.space_attention(self.features(x)))
        return scores.mean(dim=(2, 3)), scores


@register_model("ma")
def build_ma(
    pretrained: bool = False, in_chans: int = 3, num_classes: int = NUM_LABELS, imagenet_weights: str = "v1"
) -> MultiAttentionNet:
    """Build the ma2019 network. ``pretrained`` loads ImageNet ResNet-101 weights into the ResNet part (SE
    blocks stay random), as ma2019 §4.1 states.

    47,335,230 parameters at 14 classes, 3 input channels (SE-ResNet-101 features 47,277,872 + 4096·14 + 14).
    """
    features, num_features = build_backbone("seresnet101", pretrained, in_chans, imagenet_weights)
    return MultiAttentionNet(features, num_features, num_classes)
