"""Classifier heads: global pooling (avg / max / LSE) and the grouped per-class linear head."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

POOLS: tuple[str, ...] = ("avg", "max", "lse")


def global_pool(x: Tensor, mode: str = "avg", lse_r: float = 10.0) -> Tensor:
    """Pool a (B, C, h, w) map to (B, C).

    Args:
        x: feature map.
        mode: ``avg``, ``max`` or ``lse``. LSE is Wang et al. 2017's log-sum-exp pooling,
            ``x_p = (1/r) log((1/S) Σ_ij exp(r x_ij))`` with S = h·w: average pooling as r → 0, max as r → ∞.
            ``torch.logsumexp`` subtracts the max first, which is Wang et al.'s own overflow fix.
        lse_r: LSE sharpness r (Wang et al. found r = 10 best).
    """
    flat = x.flatten(2)
    if mode == "avg":
        return flat.mean(dim=2)
    if mode == "max":
        return flat.amax(dim=2)
    if mode == "lse":
        return (torch.logsumexp(lse_r * flat, dim=2) - math.log(flat.shape[2])) / lse_r
    raise ValueError(f"unknown pooling {mode!r} (known: {', '.join(POOLS)})")


class ClassWiseLinear(nn.Module):
    """K independent ``N → 1`` classifiers, one per class, as one grouped op.

    ``weight`` (K, N) and ``bias`` (K,) have exactly the shapes of ``nn.Linear(N, K)``, so the state dict is
    interchangeable with a plain linear head (``diseasemask`` relies on this between its stages).
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.bias = nn.Parameter(torch.empty(num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as ``nn.Linear`` does: U(−1/√N, 1/√N) for weight and bias."""
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, pooled: Tensor) -> Tensor:
        """Map per-class pooled features (B, K, N) to logits (B, K): ``logit_k = w_k · z_k + b_k``."""
        return torch.einsum("bkn,kn->bk", pooled, self.weight) + self.bias

    def forward_gated(self, features: Tensor, gate: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and maps of per-class gated features ``H^k = g^k ⊙ f`` without building (B, K, N, h, w).

        ``GAP(g^k ⊙ f)_n = (1/hw) Σ_ij g^k_ij f_n,ij`` is one einsum over positions, and the CAM of H^k is
        ``g^k ⊙ Σ_n w_k,n f_n``. Memory is O(B·K·N + B·K·h·w) instead of O(B·K·N·h·w).

        Args:
            features: (B, N, h, w), the features every class shares.
            gate: (B, K, h, w) per-class spatial weights; a size-1 batch or class dimension is broadcast
                with ``expand`` (a view, never a copy).

        Returns:
            ``(logits (B, K), maps (B, K, h, w))``; ``maps.mean((2, 3)) + bias == logits``.
        """
        b, _, h, w = features.shape
        gate = gate.expand(b, self.weight.shape[0], h, w)
        pooled = torch.einsum("bkhw,bnhw->bkn", gate, features) / (h * w)
        maps = gate * torch.einsum("bnhw,kn->bkhw", features, self.weight)
        return self(pooled), maps
