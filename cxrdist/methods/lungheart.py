"""fang2021 lung/heart weighting: U-Net masks of lungs and heart weight DenseNet-121 features (F_l = F_g ⊙ M_g).

Stages (docs/methods.md#lungheart):

1. ``seg`` — train the U-Net (left lung, right lung, heart; soft Dice) on the JSRT + SCR set
   (``method.options.seg_root``, layout in :mod:`cxrdist.data.jsrt`); DONE.json holds the val Dice per structure.
2. ``masks`` — the union mask of every image of every split as a key-aligned ``<split>/mask`` sidecar.
3. ``classify`` — multi-scale input attention + DenseNet-121, the mask joined by the loader (kind "image", so
   it follows the crop) and passed as ``model(image, mask=mask)``.
4. ``eval`` — test AUROC and localization; the heatmap is the CAM of the features the head classifies, F_l.

fang2021's CAM IoU (0.3014, Table 3 / §4.3) is set beside this run's maps: the CAM of F_l, the features the
masked model's head classifies (``published.localization.applies_to``). The ablation ``use_mask=false`` maps its own
head on F_g and is reported without a paper number.

Ablations: ``method.model.use_mask=false`` is "Ours w/o F_l" (Table 2; the seg and masks stages are dropped),
``method.model.multiscale=false`` is "FE w/o MA" (Table 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from omegaconf import OmegaConf

from cxrdist.engine.predictor import AuxNet
from cxrdist.engine.stages import EvalStage, FunctionStage, Stage, StageContext, TrainStage
from cxrdist.methods.base import Method, register_method
from cxrdist.methods.lungheart_stages import mask_rows, train_unet, write_masks
from cxrdist.models import build_model


def forward(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Logits; the lung/heart mask is passed when the loader joined one."""
    return model(batch["image"], mask=batch.get("mask"))


def maps(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and CAMs of the features the head classifies (F_l = F_g ⊙ M_g; F_g without the mask)."""
    return model.forward_with_maps(batch["image"], mask=batch.get("mask"))


@register_method("lungheart")
class LungHeart(Method):
    """U-Net masks, then the masked classifier, then evaluation."""

    IMAGENET = ("densenet121",)  # the U-Net starts from scratch

    @dataclass
    class ModelConfig:
        pretrained: bool = True  # ImageNet DenseNet-121 ("pre-trained 121-layer DenseNet", fang2021 §4.2)
        imagenet_weights: str = (
            "v1"  # v1: IMAGENET1K_V1, the original weights the papers used | v2: torchvision DEFAULT
        )
        multiscale: bool = True  # multi-scale input attention (§3.2); false = "FE w/o MA"
        use_mask: bool = True  # F_l = F_g ⊙ M_g (Eq. 3); false = "Ours w/o F_l"

    @dataclass
    class Options:
        seg_root: str | None = None  # JSRT + SCR root; None = <data.root>/../phantom/segmentation (demo layout)
        seg_val_fraction: float = 0.2  # JSRT images held out for model selection (choice)
        seg_threshold: float = 0.5  # per-channel sigmoid threshold (choice)
        unet_width: int = 32  # U-Net base width (choice; depth 4)
        mask_size: int = 64  # side of the stored union mask (whole frame, fractional; choice)
        examples: int = 4  # example images in the stages' PNGs

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        o = self.options
        if not 0 < o.seg_val_fraction < 1 or not 0 < o.seg_threshold < 1 or o.mask_size < 1 or o.unet_width < 1:
            raise ValueError(f"method.options: bad values {o}")

    def build_model(self, stage: str) -> torch.nn.Module:
        """The classifier of ``stage``."""
        m = self.model_cfg
        return build_model(
            "lungheart",
            pretrained=m.pretrained,
            imagenet_weights=m.imagenet_weights,
            in_chans=self.in_chans(stage),
            multiscale=m.multiscale,
            use_mask=m.use_mask,
        )

    def loader_extras(self, ctx: StageContext) -> dict[str, Any]:
        """The masks sidecar of the loader's split (``{split}`` is filled in by the loader)."""
        if not self.model_cfg.use_mask:
            return {}
        return {"sidecars": {"mask": str(ctx.stage_path("masks", "{split}", "mask"))}}

    def aux_networks(self) -> list[AuxNet]:
        """The U-Net of ``seg``, whose union mask (the ``masks`` stage's rows) the classifier reads as ``mask``."""
        if not self.model_cfg.use_mask:
            return []
        o, tf = self.options, self.recipe("seg").transforms
        return [
            AuxNet(
                "mask",
                "seg",
                "best.pt",
                lambda: build_model("unet", base_width=o.unet_width, in_chans=tf.channels),
                tf,
                partial(mask_rows, threshold=o.seg_threshold, size=o.mask_size),
                kind="image",
                dtype="float16",
            )
        ]

    def stages(self) -> list[Stage]:
        recipe = self.recipe("classify")
        build = lambda ctx: self.build_model("classify")  # noqa: E731
        classify = TrainStage("classify", recipe, build, forward=forward, loader_extras=self.loader_extras)
        evaluate = EvalStage(
            "eval",
            build,
            weights=lambda ctx: ctx.stage_path("classify", "best.pt"),
            transforms=lambda ctx: recipe.transforms,
            maps=maps,
            loader_extras=self.loader_extras,
            published=self.published(),
        )
        if not self.model_cfg.use_mask:  # "w/o F_l": no segmentation needed
            return [classify, evaluate]
        self.recipe("seg")  # fail at composition, not after hours, when the U-Net recipe is missing
        return [
            FunctionStage("seg", partial(train_unet, opts=self.options, recipe=self.recipe("seg"))),
            FunctionStage("masks", partial(write_masks, opts=self.options, recipe=self.recipe("seg"))),
            classify,
            evaluate,
        ]

    def published(self) -> dict[str, Any]:
        """The paper's numbers for the report."""
        return OmegaConf.to_container(self.cfg.method.published)
