"""The model registry: builders register themselves by name (``@register_model("chexnet")``), as methods do."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register the decorated builder as ``name`` (a second builder of the same name is an error)."""

    def add(fn: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice ({_MODELS[name].__module__}, {fn.__module__})")
        _MODELS[name] = fn
        return fn

    return add


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
