"""The method registry and base class. A method = validated options + an ordered list of stages."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig, OmegaConf

from cxrdist.engine.predictor import AuxNet
from cxrdist.engine.stages import EvalStage, Stage, StageContext, TrainStage
from cxrdist.models.backbones import IMAGENET_WEIGHTS

_METHODS: dict[str, type[Method]] = {}


def register_method(name: str):
    """Class decorator: register a Method under its Hydra option name (duplicates are an error)."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice ({_METHODS[name].__name__}, {cls.__name__})")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def get_method(name: str) -> type[Method]:
    """The Method class registered as ``name``."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def list_methods() -> list[str]:
    """Registered method names (sorted)."""
    return sorted(_METHODS)


@dataclass
class NoOptions:
    """Methods without options beyond the model's."""


def maps_of(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, per-class maps) of a Classifier in one pass: the default heatmap (CAM or the model's own map)."""
    return model.forward_with_maps(batch["image"])


class Method(ABC):
    """Base: validates ``method.model`` / ``method.options`` against the method's dataclasses."""

    name: ClassVar[str]
    ModelConfig: ClassVar[type] = NoOptions
    Options: ClassVar[type] = NoOptions
    # torchvision models whose ImageNet weights ``model.pretrained`` loads (checked before a run starts).
    IMAGENET: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.model_cfg = self._validate(self.ModelConfig, cfg.method.model, "method.model")
        self.options = self._validate(self.Options, cfg.method.options, "method.options")
        weights = getattr(self.model_cfg, "imagenet_weights", IMAGENET_WEIGHTS[0])
        if weights not in IMAGENET_WEIGHTS:
            raise ValueError(
                f"method.model.imagenet_weights={weights!r}: choose v1 (IMAGENET1K_V1, the original weights the "
                "papers used) or v2 (torchvision's DEFAULT: IMAGENET1K_V2 for ResNet-50/101)"
            )

    @staticmethod
    def _validate(schema: type, node: Any, where: str) -> Any:
        try:
            merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        except Exception as e:  # omegaconf raises several types; all mean a bad key or value
            raise ValueError(f"{where}: {e}".split("\n")[0]) from None
        return OmegaConf.to_object(merged)

    def imagenet_backbones(self) -> list[str]:
        """The torchvision models whose ImageNet weights this config loads (none unless ``model.pretrained``)."""
        return list(self.IMAGENET) if getattr(self.model_cfg, "pretrained", False) else []

    def recipe(self, stage: str) -> DictConfig:
        """The recipe of one of the method's training stages."""
        if stage not in self.cfg.method.stages:
            raise ValueError(
                f"method {self.name}: config has no recipe for stage {stage!r} (has {list(self.cfg.method.stages)})"
            )
        return self.cfg.method.stages[stage]

    def in_chans(self, stage: str) -> int:
        """Input channels the backbone gets in a stage (the recipe's transform)."""
        return int(self.recipe(stage).transforms.channels)

    @abstractmethod
    def stages(self) -> list[Stage]:
        """The ordered stages of this method."""

    def aux_networks(self) -> list[AuxNet]:
        """The auxiliary networks whose outputs the final model reads as sidecars (predict runs them per image)."""
        return []

    def train_and_eval(self, stage: str, build_model, **train_kw: Any) -> list[Stage]:
        """The common tail: a TrainStage and the final EvalStage of its best-by-val model."""
        recipe = self.recipe(stage)
        extras = train_kw.get("loader_extras", lambda ctx: {})
        return [
            TrainStage(stage, recipe, build_model, **train_kw),
            EvalStage(
                "eval",
                build_model,
                weights=lambda ctx: ctx.stage_path(stage, "best.pt"),
                transforms=lambda ctx: recipe.transforms,
                maps=train_kw.get("maps", maps_of),
                loader_extras=lambda ctx: {k: v for k, v in extras(ctx).items() if k == "sidecars"},
                published=OmegaConf.to_container(self.cfg.method.published),
            ),
        ]


def build_context_free(method: Method, stage: str):
    """A model builder for ``stage`` that ignores the context (most methods)."""

    def build(ctx: StageContext) -> torch.nn.Module:
        return method.build_model(stage)

    return build
