"""Class activation maps (Zhou et al. 2016): the linear classifier applied at every feature position.

Used by every classifier's ``heatmaps``, by the localization evaluator and by the ``diseasemask`` mask stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def class_activation_maps(features: Tensor, fc_weight: Tensor, fc_bias: Tensor | None = None) -> Tensor:
    """Compute CAMs ``M_k(i, j) = Σ_c w_{k,c} f_c(i, j) (+ b_k)``.

    For a GAP + linear head the spatial mean of the (biased) map is exactly the logit.

    Args:
        features: (B, C, h, w) last feature map (the tensor the head pools).
        fc_weight: (K, C) classifier weight (a (K, C, 1, 1) 1×1-conv weight is accepted too).
        fc_bias: optional (K,) bias; the standard CAM leaves it out (it shifts a map by a constant).

    Returns:
        (B, K, h, w) maps.
    """
    weight = fc_weight.reshape(fc_weight.shape[0], -1)
    if weight.shape[1] != features.shape[1]:
        raise ValueError(f"fc_weight has {weight.shape[1]} inputs, features have {features.shape[1]} channels")
    maps = torch.einsum("bchw,kc->bkhw", features, weight)
    if fc_bias is not None:
        maps = maps + fc_bias.view(1, -1, 1, 1)
    return maps


def upsample_maps(maps: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinearly resize (B, K, h, w) maps to ``size`` (align_corners=False: pixel areas line up exactly)."""
    if isinstance(size, int):
        size = (size, size)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
