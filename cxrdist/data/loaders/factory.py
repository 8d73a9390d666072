"""The one loader factory, and the only module that names both backends (``loader=torch|dali``)."""

from __future__ import annotations

import torch

from cxrdist.data.loaders.base import BaseLoader, LoaderSpec
from cxrdist.data.loaders.pil import TorchLoader

BACKENDS = ("torch", "dali")


def build_loader(
    backend: str,
    spec: LoaderSpec,
    *,
    world_size: int = 1,
    rank: int = 0,
    device: torch.device | None = None,
    dali_threads: int = 2,
) -> BaseLoader:
    """The one loader factory: ``backend`` is the config's ``loader`` choice."""
    if backend == "torch":
        return TorchLoader(spec, world_size=world_size, rank=rank, device=device)
    if backend == "dali":
        from cxrdist.data.loaders.dali import DaliLoader  # optional heavy dependency: DALI imports only when asked

        return DaliLoader(spec, world_size=world_size, rank=rank, device=device, num_threads=dali_threads)
    raise ValueError(f"unknown loader {backend!r}; choose one of {BACKENDS}")
