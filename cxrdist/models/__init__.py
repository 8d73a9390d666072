"""Architectures of every method (pure ``nn.Module``s) and a name → builder registry (``registry.py``).

Classifiers take (B, C, H, W) float images and return (B, 14) logits; they share :class:`Classifier`
(``forward``, ``forward_with_maps``, ``heatmaps``). ``unet`` and ``alignment`` are the auxiliary networks of
``lungheart`` and ``diseasemask``. Each builder registers itself with ``@register_model(name)`` in its module.
"""

from __future__ import annotations

# Importing each architecture registers its builder (@register_model in its module).
from cxrdist.models import (  # noqa: F401  (registration)
    alignment,
    amdensenet,
    baselines,
    cral,
    diseasemask,
    lungheart,
    ma,
    unet,
)
from cxrdist.models.backbones import BACKBONES, build_backbone
from cxrdist.models.base import Classifier, num_parameters
from cxrdist.models.registry import build_model, list_models, register_model

__all__ = [
    "BACKBONES",
    "Classifier",
    "build_backbone",
    "build_model",
    "list_models",
    "num_parameters",
    "register_model",
]
