"""fang2021 lung/heart weighting: multi-scale input attention, DenseNet-121, features weighted by a U-Net mask."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cxrdist.labels import NUM_LABELS
from cxrdist.models.attention import MultiScaleInputAttention
from cxrdist.models.backbones import build_backbone
from cxrdist.models.base import Classifier
from cxrdist.models.cam import class_activation_maps
from cxrdist.models.registry import register_model


class LungHeartNet(Classifier):
    """Image → multi-scale attention → DenseNet-121 F_g → F_l = F_g ⊙ M_g → GAP → linear (fang2021 §3).

    M_g is the union lung/heart mask (B, 1, H, W) in [0, 1], adaptive-average-pooled to F_g's h×w and kept
    fractional (choice; fang2021 Eq. 3 "F_l = F_g ⊗ M_g"). With ``use_mask=True`` every forward
    needs the mask: a forgotten mask raises instead of silently training the "w/o F_l" ablation.

    The heatmap is the model's own CAM, of the features its head classifies: Σ_k w_k^c F_l,k (the logits are its
    spatial mean plus the bias), so with the mask it is zero outside the lungs and heart. fang2021's Table 3 CAM IoU
    (0.3014) is set beside this masked model's maps (docs/methods.md, "lungheart's CAM"); the "w/o F_l" ablation
    (``use_mask=False``) maps its own head on F_g. The earlier maps, the masked model's head applied to the unmasked
    F_g, were neither model's: that head was fitted to masked features.
    """

    def __init__(
        self,
        features: nn.Module,
        num_features: int,
        num_classes: int = NUM_LABELS,
        in_chans: int = 3,
        multiscale: bool = True,
        use_mask: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.use_mask = use_mask
        self.input_attention: nn.Module = MultiScaleInputAttention(in_chans) if multiscale else nn.Identity()
        self.features = features
        self.classifier = nn.Linear(num_features, num_classes)

    def _check_mask(self, x: Tensor, mask: Tensor | None) -> None:
        if self.use_mask and mask is None:
            raise ValueError("this lungheart model has use_mask=True: pass mask=(B, 1, H, W) lung/heart mask")
        if not self.use_mask and mask is not None:
            raise ValueError("this lungheart model has use_mask=False but a mask was passed")
        if mask is not None and (mask.ndim != 4 or mask.shape[:2] != (x.shape[0], 1)):
            raise ValueError(f"mask must be (B, 1, H, W) with B={x.shape[0]}, got {tuple(mask.shape)}")

    def forward_with_maps(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return logits (B, K) and the CAMs (B, K, h, w) of the classified features (F_l, or F_g without mask)."""
        self._check_mask(x, mask)
        fg = self.features(self.input_attention(x))
        fl = fg * F.adaptive_avg_pool2d(mask.to(fg.dtype), fg.shape[-2:]) if mask is not None else fg
        logits = self.classifier(fl.mean(dim=(2, 3)))
        return logits, class_activation_maps(fl, self.classifier.weight)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Return logits (B, K); ``mask`` (B, 1, H, W) is required when ``use_mask``."""
        return self.forward_with_maps(x, mask)[0]

    def heatmaps(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Return the CAMs (B, K, h, w) of the classified features (``mask`` required when ``use_mask``)."""
        return self.forward_with_maps(x, mask)[1]


@register_model("lungheart")
def build_lungheart(
    pretrained: bool = False,
    in_chans: int = 3,
    num_classes: int = NUM_LABELS,
    multiscale: bool = True,
    use_mask: bool = True,
    imagenet_weights: str = "v1",
) -> LungHeartNet:
    """Build the fang2021 classifier (``multiscale=False``: "FE w/o MA"; ``use_mask=False``: "w/o F_l").

    6,969,461 parameters at 14 classes, 3 input channels (DenseNet-121 + 14-way head 6,968,206 + multi-scale
    attention 1,255); the mask adds none.
    """
    features, num_features = build_backbone("densenet121", pretrained, in_chans, imagenet_weights)
    return LungHeartNet(features, num_features, num_classes, in_chans, multiscale, use_mask)
