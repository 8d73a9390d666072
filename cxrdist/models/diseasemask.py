"""kim2021 disease masks: the ResNet-50 classifier with mask attention, and the mask construction (Eq. 3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cxrdist.labels import BOX_CLASSES, NUM_LABELS
from cxrdist.models.backbones import build_backbone, stage_outputs
from cxrdist.models.base import Classifier
from cxrdist.models.heads import ClassWiseLinear
from cxrdist.models.registry import register_model

# kim2021 §3.1: flip-sum for "the seven symmetrical diseases", L̄ = L for Cardiomegaly (the asymmetric one).
SYMMETRIC_BOX_CLASSES: tuple[bool, ...] = tuple(name != "Cardiomegaly" for name in BOX_CLASSES)
# kim2021 §3.1: "dropping images x where P_c(x) < 0.8 to obtain high-quality class activation maps".
MIN_CAM_PROB = 0.8
# The threshold of T(·) is not in kim2021 (choice).
MASK_THRESHOLD = 0.5


class DiseaseMaskNet(Classifier):
    """ResNet-50 S (B, 2048, h, w) → Ŝ_c = (1 + ψ_c) ⊙ S per class → GAP → FC_c → logit c.

    kim2021 Eq. 4 writes f' = ψ·f + f with one shared f; the per-class reading (docs/methods.md#diseasemask) gives
    Ŝ_c = Σ_k w_k^c (ψ_c ⊙ f_k + f_k) = (1 + ψ_c) ⊙ S_c and logit_c = GAP(Ŝ_c) + b_c, computed as one grouped
    op (:meth:`ClassWiseLinear.forward_gated`). ``psi`` (K, h, w) is a buffer, zero until the mask stage sets
    it: with ψ = 0 the model computes the plain GAP + Linear(2048, K) ResNet-50 of stages 0 and 2, and
    ``fc`` has nn.Linear's shapes, so checkpoints move between the stages unchanged. The heatmap is Ŝ_c
    (Eq. 5), which for ψ = 0 is the plain CAM.
    """

    def __init__(
        self, features: nn.Sequential, num_features: int, num_classes: int = NUM_LABELS, mask_size: int = 16
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = features
        self.fc = ClassWiseLinear(num_features, num_classes)
        self.register_buffer("psi", torch.zeros(num_classes, mask_size, mask_size))

    def set_masks(self, masks: Tensor) -> None:
        """Set ψ from (M, h, w) masks for the first M ≤ K classes; the other classes get ψ = 0 (no attention:
        a choice for the 6 classes without boxes). The mask resolution may differ from before."""
        if masks.ndim != 3 or masks.shape[0] > self.num_classes:
            raise ValueError(f"masks must be (M <= {self.num_classes}, h, w), got {tuple(masks.shape)}")
        psi = torch.zeros(self.num_classes, *masks.shape[1:], dtype=self.psi.dtype, device=self.psi.device)
        psi[: masks.shape[0]] = masks
        self.psi = psi  # assigning to a registered buffer's name replaces the buffer

    def forward_with_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return logits (B, K) and the attended CAMs Ŝ (B, K, h, w)."""
        s = self.features(x)
        if s.shape[-2:] != self.psi.shape[-2:]:
            raise ValueError(
                f"feature map is {tuple(s.shape[-2:])} but psi is {tuple(self.psi.shape[-2:])}: build the model "
                "with mask_size = input size / 32"
            )
        return self.fc.forward_gated(s, (1 + self.psi).unsqueeze(0))

    def stage_features(self, x: Tensor) -> list[Tensor]:
        """Return the conv2_x … conv5_x outputs (layer1 … layer4), the perceptual-loss features of Eq. 7."""
        return stage_outputs(self.features, x, ("layer1", "layer2", "layer3", "layer4"))


@register_model("diseasemask")
def build_diseasemask(
    pretrained: bool = False,
    in_chans: int = 3,
    num_classes: int = NUM_LABELS,
    mask_size: int = 16,
    imagenet_weights: str = "v1",
) -> DiseaseMaskNet:
    """Build the kim2021 classifier. ``mask_size`` is the feature-map side: 16 for the paper's 512 input.

    23,536,718 parameters at 14 classes, 3 input channels (= torchvision ``resnet50(num_classes=14)``; ψ is a
    buffer, not a parameter).
    """
    features, num_features = build_backbone("resnet50", pretrained, in_chans, imagenet_weights)
    return DiseaseMaskNet(features, num_features, num_classes, mask_size)


def accumulate_disease_masks(
    cams: Tensor, symmetric: Sequence[bool], keep: Tensor | None = None, eps: float = 1e-12
) -> tuple[Tensor, Tensor]:
    """Per-class sums of normalised, flip-summed CAMs and their counts (the distributable half of Eq. 3).

    L̄ = H(L) + L for symmetric classes and L̄ = L otherwise, then each L̄ is min-max normalised to [0, 1]
    (N(·); "min-max" is the reading cxrdist chose; a constant map normalises to 0), then summed over the kept
    samples. Sums and counts of disjoint chunks add up, so ranks can ``all_reduce`` them.

    Args:
        cams: (N, K, h, w) CAMs of N images for K classes.
        symmetric: K flags (e.g. :data:`SYMMETRIC_BOX_CLASSES`).
        keep: (N, K) bool, which (image, class) maps enter (e.g. ``sigmoid(logits) >= MIN_CAM_PROB``);
            all when None.
        eps: guard for constant maps.

    Returns:
        ``(sums (K, h, w) float64, counts (K,) float64)``.
    """
    n, k = cams.shape[:2]
    if len(symmetric) != k:
        raise ValueError(f"got {len(symmetric)} symmetric flags for {k} classes")
    sym = torch.tensor(list(symmetric), dtype=torch.bool, device=cams.device).view(1, k, 1, 1)
    lbar = torch.where(sym, cams + cams.flip(-1), cams).double()
    lo = lbar.amin(dim=(-2, -1), keepdim=True)
    hi = lbar.amax(dim=(-2, -1), keepdim=True)
    normed = (lbar - lo) / (hi - lo).clamp_min(eps)
    weight = torch.ones(n, k, dtype=torch.float64, device=cams.device) if keep is None else keep.double()
    return torch.einsum("nk,nkhw->khw", weight, normed), weight.sum(dim=0)


def finalize_disease_masks(
    sums: Tensor, counts: Tensor, threshold: float = MASK_THRESHOLD, renormalize: bool = False
) -> Tensor:
    """Average the accumulated maps and threshold them: ψ_c = T((1/N_c) Σ N(L̄)) (kim2021 Eq. 3).

    Args:
        sums: (K, h, w) from :func:`accumulate_disease_masks` (summed over chunks / ranks).
        counts: (K,) matching counts; a class with no kept map gets ψ_c = 0.
        threshold: T keeps values ≥ threshold.
        renormalize: min-max the averaged map before thresholding (the average of [0, 1] maps may peak
            below 1; not in the paper, off by default).

    Returns:
        (K, h, w) float32 binary masks.
    """
    mean = sums / counts.clamp_min(1).view(-1, 1, 1)
    if renormalize:
        lo = mean.amin(dim=(-2, -1), keepdim=True)
        mean = (mean - lo) / (mean.amax(dim=(-2, -1), keepdim=True) - lo).clamp_min(1e-12)
    psi = (mean >= threshold) & (counts > 0).view(-1, 1, 1)
    return psi.float()


def build_disease_masks(
    cams_per_class: Tensor,
    symmetric: Sequence[bool] = SYMMETRIC_BOX_CLASSES,
    threshold: float = MASK_THRESHOLD,
    keep: Tensor | None = None,
) -> Tensor:
    """Build binary disease masks ψ (K, h, w) from CAMs (N, K, h, w) in one process (kim2021 Eq. 3).

    Equal to :func:`finalize_disease_masks` of the summed :func:`accumulate_disease_masks` of any split of the
    N images.
    """
    sums, counts = accumulate_disease_masks(cams_per_class, symmetric, keep)
    return finalize_disease_masks(sums, counts, threshold)
