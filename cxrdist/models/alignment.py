"""kim2021 alignment module: a ResNet-18 that regresses an affine transform, and the warping helpers.

Conventions (kim2021 §3.2 Eq. 6 leaves them open; choices: docs/methods.md#diseasemask):

- ``params`` (B, 5) are the paper's (s_x, s_y, t_x, t_y, θ). The matrix is
  ``[[s_x cos θ, −s_y sin θ, t_x], [s_x sin θ, s_y cos θ, t_y]]``, used as the ``F.affine_grid`` theta: it maps
  a position p of the *aligned* image to the position A·p of the *original* image that is sampled there,
  ``aligned(p) = original(A p)``. Positions are normalised to [−1, 1] (x right, y down), so t = 1 shifts by
  half the image and θ is in radians in that frame.
- ``align_corners=False`` everywhere: [−1, 1] spans the pixel *edges*, so the same params mean the same
  geometric transform at every resolution: the 512² warp of the image and the 16² inverse warp of a CAM agree.
- Outside the original image the warp samples zeros (``padding_mode``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrdist.models.backbones import build_backbone
from cxrdist.models.registry import register_model

NUM_PARAMS = 5
# kim2021 §3.2: G(·) is "average pooling with a kernel size of 16 and stride of 16".
SMOOTH_KERNEL = 16


class AlignmentNet(nn.Module):
    """ResNet-18 → GAP → Linear(512, 5) → (s_x, s_y, t_x, t_y, θ).

    The head predicts log-scales (s = exp(raw), always positive, zoom in and out symmetric) and t, θ directly.
    Its weight and bias start at zero, so an untrained module outputs (1, 1, 0, 0, 0), the identity
    (choice), and training starts from the unaligned image.
    """

    def __init__(self, features: nn.Module, num_features: int) -> None:
        super().__init__()
        self.features = features
        self.fc = nn.Linear(num_features, NUM_PARAMS)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Return params (B, 5) = (s_x, s_y, t_x, t_y, θ) for images ``x`` (B, C, H, W)."""
        raw = self.fc(self.features(x).mean(dim=(2, 3)))
        return torch.cat([raw[:, :2].exp(), raw[:, 2:]], dim=1)


@register_model("alignment")
def build_alignment(pretrained: bool = False, in_chans: int = 3, imagenet_weights: str = "v1") -> AlignmentNet:
    """Build the alignment module (ResNet-18; ImageNet init is a choice).

    11,179,077 parameters at 3 input channels (ResNet-18 features 11,176,512 + 512·5 + 5).
    """
    features, num_features = build_backbone("resnet18", pretrained, in_chans, imagenet_weights)
    return AlignmentNet(features, num_features)


def affine_matrix(params: Tensor) -> Tensor:
    """Build the (B, 2, 3) matrices of kim2021 Eq. 6 from params (B, 5) = (s_x, s_y, t_x, t_y, θ)."""
    sx, sy, tx, ty, theta = params.unbind(dim=1)
    cos, sin = theta.cos(), theta.sin()
    row0 = torch.stack([sx * cos, -sy * sin, tx], dim=1)
    row1 = torch.stack([sx * sin, sy * cos, ty], dim=1)
    return torch.stack([row0, row1], dim=1)


def invert_affine(theta: Tensor) -> Tensor:
    """Invert (B, 2, 3) affine maps: ``[M | t]⁻¹ = [M⁻¹ | −M⁻¹ t]``."""
    m_inv = torch.linalg.inv(theta[:, :, :2])
    return torch.cat([m_inv, -m_inv @ theta[:, :, 2:]], dim=2)


def transform_points(theta: Tensor, points: Tensor) -> Tensor:
    """Apply (B, 2, 3) affine maps to normalised points (B, N, 2) (x, y): returns ``M p + t`` (B, N, 2)."""
    return points @ theta[:, :, :2].transpose(1, 2) + theta[:, :, 2].unsqueeze(1)


def _sample(images: Tensor, theta: Tensor, padding_mode: str) -> Tensor:
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def warp(images: Tensor, params: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Align images: ``aligned(p) = images(A p)`` with A = :func:`affine_matrix` (bilinear sampling)."""
    return _sample(images, affine_matrix(params), padding_mode)


def warp_maps_back(maps: Tensor, params: Tensor, padding_mode: str = "zeros") -> Tensor:
    """Map (B, K, h, w) heatmaps of aligned images back to the original frame: ``orig(q) = maps(A⁻¹ q)``.

    Regions of the original image that the aligned image did not cover get zeros.
    """
    return _sample(maps, invert_affine(affine_matrix(params)), padding_mode)


def smooth(images: Tensor, k: int = SMOOTH_KERNEL) -> Tensor:
    """B∘G of kim2021 Eq. 6: k×k average pooling with stride k, then bilinear upsampling to the input size.

    Used only inside the alignment loss; the classifier sees the sharp warp (choice).
    """
    pooled = F.avg_pool2d(images, kernel_size=k, stride=k)
    return F.interpolate(pooled, size=images.shape[-2:], mode="bilinear", align_corners=False)
