"""U-Net for the lungheart segmentation stage (left lung, right lung, heart) and its soft Dice loss.

fang2021 §3.3: "We apply U-Net [39] to train a segmentation model for the left lung, right lung, and heart on
the JSRT dataset by using dice loss." Depth, widths and normalisation are not given (docs/methods.md#lungheart):
a standard U-Net with 4 poolings, BN after each 3×3 conv, transposed-conv upsampling.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cxrdist.models.registry import register_model


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )  # fmt: skip


class UNet(nn.Module):
    """U-Net returning per-channel logits (B, out_chans, H, W); H and W must be divisible by 2**depth."""

    def __init__(self, in_chans: int = 3, out_chans: int = 3, base_width: int = 32, depth: int = 4) -> None:
        super().__init__()
        self.depth = depth
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(_double_conv(cin, cout) for cin, cout in zip([in_chans] + widths[:-2], widths))
        self.pool = nn.MaxPool2d(2)
        self.bottom = _double_conv(widths[-2], widths[-1])
        self.up = nn.ModuleList(nn.ConvTranspose2d(w, w // 2, 2, stride=2) for w in reversed(widths[1:]))
        self.dec = nn.ModuleList(_double_conv(w, w // 2) for w in reversed(widths[1:]))
        self.head = nn.Conv2d(base_width, out_chans, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits (B, out_chans, H, W) for images ``x`` (B, in_chans, H, W)."""
        if x.shape[-2] % 2**self.depth or x.shape[-1] % 2**self.depth:
            raise ValueError(f"U-Net input {tuple(x.shape[-2:])} must be divisible by {2**self.depth}")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


@register_model("unet")
def build_unet(in_chans: int = 3, out_chans: int = 3, base_width: int = 32, depth: int = 4) -> UNet:
    """Build the segmentation U-Net (no pretrained weights exist for it).

    7,763,107 parameters at the defaults (3 in, 3 out, width 32, depth 4).
    """
    return UNet(in_chans, out_chans, base_width, depth)


def dice_per_channel(probs: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Dice ``(2|P∩T| + eps) / (|P| + |T| + eps)`` per channel, summed over batch and pixels.

    Args:
        probs: (B, C, H, W) probabilities (soft) or 0/1 predictions (hard Dice for evaluation).
        target: (B, C, H, W) 0/1 masks.
        eps: smoothing; keeps an empty channel predicted empty at Dice 1 instead of 0/0.

    Returns:
        (C,) Dice values.
    """
    dims = (0, 2, 3)
    inter = (probs * target).sum(dims)
    return (2 * inter + eps) / (probs.sum(dims) + target.sum(dims) + eps)


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Dice loss ``1 − mean_c Dice_c(sigmoid(logits), target)`` (fang2021 Eq. 2, one sigmoid per output)."""
    return 1 - dice_per_channel(torch.sigmoid(logits), target.to(logits.dtype), eps).mean()


def union_mask(logits: Tensor, threshold: float = 0.5) -> Tensor:
    """Union of the thresholded channels, (B, 1, H, W) float 0/1: fang2021's M_g ("pixel-wise summation" of
    the three masks, clipped to 1). Threshold 0.5 on the sigmoid is a choice."""
    return (torch.sigmoid(logits) >= threshold).any(dim=1, keepdim=True).to(logits.dtype)
