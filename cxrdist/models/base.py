"""The interface every classification model shares: logits, and per-class maps from the same pass."""

from __future__ import annotations

from torch import Tensor, nn


class Classifier(nn.Module):
    """Base class: ``forward(x) -> logits (B, K)`` and ``heatmaps(x) -> maps (B, K, h, w)``.

    Subclasses implement :meth:`forward_with_maps`. The maps are at feature resolution (upsample them with
    :func:`cxrdist.models.cam.upsample_maps`); they cost a few einsums on a 7×7 or 16×16 grid, so one code
    path serves training and localization and the two can never disagree.
    """

    num_classes: int

    def forward_with_maps(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits (B, K), maps (B, K, h, w))`` for an image batch ``x`` (B, C, H, W)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits (B, K)."""
        return self.forward_with_maps(x)[0]

    def heatmaps(self, x: Tensor) -> Tensor:
        """Return the per-class localization maps (B, K, h, w) at feature resolution."""
        return self.forward_with_maps(x)[1]


def num_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Count the parameters of ``module`` (shared parameters once).

    Args:
        module: any module.
        trainable_only: count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
