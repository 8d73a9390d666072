"""Architectures of every method (pure ``nn.Module``s) and a name → builder registry.

Classifiers take (B, C, H, W) float images and return (B, 14) logits; they share :class:`Classifier`
(``forward``, ``forward_with_maps``, ``heatmaps``). ``unet`` and ``alignment`` are the auxiliary networks of
``lungheart`` and ``diseasemask``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cxrdist.models.alignment import build_alignment
from cxrdist.models.amdensenet import build_amdensenet
from cxrdist.models.backbones import BACKBONES, build_backbone
from cxrdist.models.base import Classifier, num_parameters
from cxrdist.models.baselines import build_chexnet, build_dcnn
from cxrdist.models.cral import build_cral
from cxrdist.models.diseasemask import build_diseasemask
from cxrdist.models.lungheart import build_lungheart
from cxrdist.models.ma import build_ma
from cxrdist.models.unet import build_unet

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "dcnn": build_dcnn,
    "chexnet": build_chexnet,
    "ma": build_ma,
    "cral": build_cral,
    "amdensenet": build_amdensenet,
    "lungheart": build_lungheart,
    "diseasemask": build_diseasemask,
    "unet": build_unet,
    "alignment": build_alignment,
}


def list_models() -> list[str]:
    """Return the registered model names."""
    return list(_MODELS)


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build the model registered as ``name`` with its builder's keyword arguments.

    Raises:
        ValueError: unknown name.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(_MODELS)})")
    return _MODELS[name](**kwargs)


__all__ = ["BACKBONES", "Classifier", "build_backbone", "build_model", "list_models", "num_parameters"]
