"""Attention modules of the methods: CBAM (amdensenet), multi-scale input attention (lungheart), space
attention (ma) and CRAL's att1 / att2 branches (cral). Pure modules; the models wire them in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ChannelAttention(nn.Module):
    """CBAM channel attention, zhao2021 Eq. 1: ``σ(W1 ReLU(W0 avg(F)) + W1 ReLU(W0 max(F))) ⊙ F``.

    The MLP is bias-free, as Eq. 1 writes it; the reduction r is not in zhao2021 (r = 16: the CBAM default,
    choice).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Rescale the channels of ``x`` (B, C, h, w)."""
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention, zhao2021 Eq. 2: ``σ(f^{7×7}([avg_c(F); max_c(F)])) ⊙ F`` (no BN, as written)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Rescale the positions of ``x`` (B, C, h, w)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional block attention: channel attention, then spatial attention (zhao2021 §2.2 order)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(7)

    def forward(self, x: Tensor) -> Tensor:
        """Apply channel then spatial attention to ``x`` (B, C, h, w)."""
        return self.spatial(self.channel(x))


class MultiScaleInputAttention(nn.Module):
    """fang2021 §3.2 multi-scale attention on the input image.

    Three features (the image, a k=5 conv and a k=9 conv of it; stride 1, 'same' padding, 3 output channels:
    choices), the channel max and mean of each (6 maps), a 7×7 conv to one map (CBAM convention),
    sigmoid, multiplied into the image.
    """

    def __init__(self, in_chans: int = 3, mid_chans: int = 3) -> None:
        super().__init__()
        self.conv5 = nn.Conv2d(in_chans, mid_chans, 5, padding=2)
        self.conv9 = nn.Conv2d(in_chans, mid_chans, 9, padding=4)
        self.fuse = nn.Conv2d(6, 1, 7, padding=3)

    def attention_map(self, x: Tensor) -> Tensor:
        """Return the (B, 1, H, W) attention in (0, 1) for images ``x`` (B, C, H, W)."""
        pooled = []
        for feat in (x, self.conv5(x), self.conv9(x)):
            pooled += [feat.amax(dim=1, keepdim=True), feat.mean(dim=1, keepdim=True)]
        return torch.sigmoid(self.fuse(torch.cat(pooled, dim=1)))

    def forward(self, x: Tensor) -> Tensor:
        """Return the re-weighted image ``x ⊙ attention_map(x)`` (no residual, as fang2021 writes it)."""
        return x * self.attention_map(x)


class SpaceAttention(nn.Module):
    """ma2019 §3.2 space attention: concatenate the GAP vector, tiled back to h×w, to the map.

    (B, C, h, w) → (B, 2C, h, w). No parameters: "We only perform global average pooling operation and just
    resize it to its original shape instead of introducing convolution operation", and no ParseNet-style
    normalisation (docs/methods.md#ma).
    """

    def forward(self, x: Tensor) -> Tensor:
        """Concatenate ``x`` with its broadcast spatial mean along channels."""
        return torch.cat([x, x.mean(dim=(2, 3), keepdim=True).expand_as(x)], dim=1)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck residual unit (Residual Attention Network style), C → C, width C/4."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        mid = channels // 4
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(), nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(), nn.Conv2d(mid, channels, 1, bias=False),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x + body(x)``."""
        return x + self.body(x)


class Att1(nn.Module):
    """guan2020 §3.3 att1: conv3×3+ReLU, conv3×3+ReLU, conv1×1 → maps, sigmoid.

    Widths (512, padding 1, no BN) are not in the paper (choice).
    """

    def __init__(self, in_channels: int, num_maps: int, width: int = 512) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, num_maps, 1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """Return attention scores (B, num_maps, h, w) in (0, 1)."""
        return torch.sigmoid(self.body(x))


class HourglassAttention(nn.Module):
    """guan2020 §3.3 att2 mask branch: a one-level hourglass on F.

    Max-pool (3×3, stride 2, pad 1; 7 → 4), two pre-activation residual units, bilinear upsampling back to
    the input size, BN-ReLU-conv1×1 (C → C), BN-ReLU-conv1×1 (C → maps), sigmoid. The depth, the unit
    count and the pre-activation form follow the last stage of the Residual Attention Network that guan2020
    cites (choice); the paper only fixes "two consecutive 1×1 convolution layers".
    """

    def __init__(self, in_channels: int, num_maps: int) -> None:
        super().__init__()
        self.down = nn.MaxPool2d(3, stride=2, padding=1)
        self.units = nn.Sequential(PreActBottleneck(in_channels), PreActBottleneck(in_channels))
        self.out = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(), nn.Conv2d(in_channels, in_channels, 1, bias=False),
            nn.BatchNorm2d(in_channels), nn.ReLU(), nn.Conv2d(in_channels, num_maps, 1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """Return attention scores (B, num_maps, h, w) in (0, 1) for features ``x`` (B, C, h, w)."""
        y = self.units(self.down(x))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(y))
