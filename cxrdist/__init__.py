"""cxrdist: distributed training and evaluation for NIH ChestX-ray14 classification and localization."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``cxrdist.load_model`` (:func:`cxrdist.deploy.load.load_model`), imported on first use."""
    if name == "load_model":
        # Lazy on purpose: it imports torch and every method (~9 s of CPU), and ``import cxrdist`` must stay cheap
        # for the command lines, which check their arguments before anything heavy loads.
        from cxrdist.deploy.load import load_model

        return load_model
    raise AttributeError(f"module 'cxrdist' has no attribute {name!r}")
