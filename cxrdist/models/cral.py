"""guan2020 CRAL: category-wise residual attention on the last feature map, one classifier per class."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cxrdist.labels import NUM_LABELS
from cxrdist.models.attention import Att1, HourglassAttention, PreActBottleneck
from cxrdist.models.backbones import build_backbone
from cxrdist.models.base import Classifier
from cxrdist.models.heads import ClassWiseLinear
from cxrdist.models.registry import register_model

ATTENTIONS: tuple[str, ...] = ("att1", "att2")


class CRAL(Classifier):
    """Backbone F (conv_5_relu) → attention a^c → H^c = ReLU((1 + a^c) ⊙ F) → GAP → FC_c → logit c.

    guan2020 Eq. 4–8. att2 (§3.3) replaces F by F̃ = two residual units on F (the trunk), with the hourglass
    attention computed on F. ``category_wise=False`` is Table 2's "w/o category" (one map shared by all
    classes); ``residual=False`` is "w/o residual" (H^c = a^c ⊙ F).

    Because a^c ≥ 0 (and 1 + a^c > 0), ReLU(g ⊙ F̃) = g ⊙ ReLU(F̃) for the gate g; the head then pools and
    maps the gated features without materialising the (B, K, C, h, w) tensor (see
    :meth:`ClassWiseLinear.forward_gated`). :meth:`attended_features` builds it, for inspection and tests.
    The heatmap of class c is the CAM of H^c with FC_c's weights.

    The attention module is ``self.attention``; a forward hook on it can replace its output (tests force it
    to zero to check the residual identity H^c = F).
    """

    def __init__(
        self,
        features: nn.Module,
        num_features: int,
        num_classes: int = NUM_LABELS,
        attention: str = "att1",
        category_wise: bool = True,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r} (known: {', '.join(ATTENTIONS)})")
        self.num_classes = num_classes
        self.residual = residual
        num_maps = num_classes if category_wise else 1
        self.features = features
        if attention == "att1":
            self.trunk: nn.Module = nn.Identity()
            self.attention: nn.Module = Att1(num_features, num_maps)
        else:
            self.trunk = nn.Sequential(PreActBottleneck(num_features), PreActBottleneck(num_features))
            self.attention = HourglassAttention(num_features, num_maps)
        self.head = ClassWiseLinear(num_features, num_classes)

    def _trunk_and_gate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return F̃ (B, C, h, w; = F for att1) and the per-class gate (B, K or 1, h, w)."""
        f = self.features(x)
        a = self.attention(f)
        return self.trunk(f), (1 + a) if self.residual else a

    def attention_maps(self, x: Tensor) -> Tensor:
        """Return the attention scores a (B, K, h, w), or (B, 1, h, w) when not category-wise."""
        return self.attention(self.features(x))

    def attended_features(self, x: Tensor) -> Tensor:
        """Return H^c = ReLU(gate^c ⊙ F̃) materialised as (B, K, C, h, w) (memory-heavy: inspection only)."""
        trunk, gate = self._trunk_and_gate(x)
        b, _, h, w = trunk.shape
        return F.relu(gate.expand(b, self.num_classes, h, w).unsqueeze(2) * trunk.unsqueeze(1))

    def forward_with_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return logits (B, K) and the CAMs of the attended features (B, K, h, w)."""
        trunk, gate = self._trunk_and_gate(x)
        return self.head.forward_gated(F.relu(trunk), gate)


@register_model("cral")
def build_cral(
    pretrained: bool = False,
    in_chans: int = 3,
    num_classes: int = NUM_LABELS,
    backbone: str = "resnet50",
    attention: str = "att1",
    category_wise: bool = True,
    residual: bool = True,
    imagenet_weights: str = "v1",
) -> CRAL:
    """Build CRAL on ``resnet50`` or ``densenet121`` with ``att1`` or ``att2``.

    Parameters at 14 classes, 3 input channels: R-50 att1 35,341,404; R-50 att2 45,618,268;
    D-121 att1 14,054,300; D-121 att2 12,503,964 (backbone + attention + 14·(C + 1) head).
    """
    if backbone not in ("resnet50", "densenet121"):
        raise ValueError(f"cral backbone must be resnet50 or densenet121, got {backbone!r}")
    features, num_features = build_backbone(backbone, pretrained, in_chans, imagenet_weights)
    return CRAL(features, num_features, num_classes, attention, category_wise, residual)
