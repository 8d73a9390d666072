"""zhao2021 AM-DenseNet: DenseNet-121 with CBAM after dense blocks 1–3, GAP, 14-way linear head."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from cxrdist.labels import NUM_LABELS
from cxrdist.models.attention import CBAM
from cxrdist.models.backbones import build_backbone
from cxrdist.models.baselines import DenseNetClassifier
from cxrdist.models.registry import register_model

PLACEMENTS: tuple[str, ...] = ("before_transition", "after_transition")


def insert_cbam(features: nn.Sequential, placement: str = "before_transition", reduction: int = 16) -> nn.Sequential:
    """Return DenseNet ``features`` with ``cbam1`` … ``cbam3`` inserted around ``transition1`` … ``transition3``.

    zhao2021 §2 puts CBAM "after the first three Dense Blocks"; whether that is before or after each
    transition layer is not fixed by the text (Fig. 1(b) is missing, docs/methods.md#amdensenet).
    ``before_transition`` (choice): denseblock_i → cbam_i → transition_i.
    ``after_transition``: denseblock_i → transition_i → cbam_i.

    Args:
        features: a Sequential with torchvision DenseNet child names.
        placement: one of :data:`PLACEMENTS`.
        reduction: CBAM channel-MLP reduction r (not in zhao2021; 16 is the CBAM default).
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown cbam_placement {placement!r} (known: {', '.join(PLACEMENTS)})")
    children: OrderedDict[str, nn.Module] = OrderedDict()
    for name, module in features.named_children():
        if name.startswith("transition") and placement == "before_transition":
            children[f"cbam{name[-1]}"] = CBAM(module.norm.num_features, reduction)
        children[name] = module
        if name.startswith("transition") and placement == "after_transition":
            children[f"cbam{name[-1]}"] = CBAM(module.conv.out_channels, reduction)
    return nn.Sequential(children)


@register_model("amdensenet")
def build_amdensenet(
    pretrained: bool = False,
    in_chans: int = 3,
    num_classes: int = NUM_LABELS,
    cbam_placement: str = "before_transition",
    reduction: int = 16,
    imagenet_weights: str = "v1",
) -> DenseNetClassifier:
    """Build AM-DenseNet; ``model.features`` is a Sequential whose child order shows the CBAM placement.

    Parameters at 14 classes, 3 input channels: 7,140,532 before the transitions (CBAM on 256, 512, 1024
    channels), 7,011,508 after (128, 256, 512 channels); DenseNet-121 + 14-way head is 6,968,206.
    """
    features, num_features = build_backbone("densenet121", pretrained, in_chans, imagenet_weights)
    return DenseNetClassifier(insert_cbam(features, cbam_placement, reduction), num_features, num_classes)
