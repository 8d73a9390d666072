"""Parameter-count helpers for the model tests (a uniquely named module: tests/ has no packages)."""

from __future__ import annotations

from torch import nn


def count(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def conv_params(cin: int, cout: int, k: int, bias: bool = True) -> int:
    """Parameters of a k×k convolution."""
    return cin * cout * k * k + (cout if bias else 0)
