"""kim2021 disease masks: align chest X-rays to an anchor, learn per-disease masks from CAMs, retrain with them.

Stages (docs/methods.md#diseasemask; stage 0 is cxrdist's, the paper presupposes its network):

0. ``perceptual`` — a plain ResNet-50 classifier on unaligned images (the perceptual-loss network of Eq. 7,
   "pretrained on the ChestX-ray14 dataset"): ``DiseaseMaskNet`` with ψ = 0 is exactly GAP + Linear ResNet-50.
1. ``align`` — anchor, ResNet-18 alignment net, per-image affine parameters of every split (vector sidecar).
2. ``classify`` — ResNet-50 on aligned images: the warp is applied on the fly from the sidecar, on the batch's
   device (``warp(image, affine)``), 5 epochs.
3. ``masks`` — the 8 disease masks ψ_c from CAMs of training images with P_c ≥ 0.8 (Eq. 3), distributed.
4. ``retrain`` — 5 more epochs from ``classify`` with Ŝ_c = (1 + ψ_c) ⊙ S_c and weighted BCE (Eq. 10).
5. ``eval`` — the CAMs Ŝ_c of aligned images are warped back to the original frame with the inverse affine
   before boxes are drawn (the evaluator then undoes the loader's geometry as for every method).

``method.options.use_masks=false`` stops after ``classify`` ("ResNet-50+Alignment", kim2021 Tables 1 and 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from cxrdist.engine.checkpoint import load_model_weights
from cxrdist.engine.predictor import AuxNet
from cxrdist.engine.stages import EvalStage, FunctionStage, Stage, StageContext, TrainStage
from cxrdist.methods.base import Method, register_method
from cxrdist.methods.diseasemask_stages import (
    affine_extras,
    affine_rows,
    align_images,
    black,
    build_masks,
    run_align,
    smooth_kernel,
)
from cxrdist.models import build_model
from cxrdist.models.alignment import warp_maps_back

RESNET_STRIDE = 32  # ResNet-50's feature map is input / 32 (16×16 at the paper's 512 input)
FRAME_OPS = ("resize", "resize_nearest")  # ops that keep the whole frame: the affine refers to it


@register_method("diseasemask")
class DiseaseMask(Method):
    """Perceptual net, alignment, classifier, masks, retraining, evaluation."""

    IMAGENET = ("resnet50", "resnet18")  # classifiers; the alignment net

    @dataclass
    class ModelConfig:
        pretrained: bool = True  # ImageNet ResNet-50 / ResNet-18 (NOT IN PAPER; a choice)
        imagenet_weights: str = (
            "v1"  # v1: IMAGENET1K_V1, the original weights the papers used | v2: torchvision DEFAULT
        )

    @dataclass
    class Options:
        anchor_images: int = 2000  # "the average of 2,000 normal random samples" (§3.2)
        euclidean: str = "sum"  # Eq. 8 reduction over pixels: sum (as printed, default) | mean (see the YAML)
        perceptual_weight: float = 1.0  # L_total = L_e + L_p (Eq. 9): equal weights
        align_grad_clip: float | None = 1.0  # max grad norm of the alignment net (choice; see the YAML)
        smooth_grid: int = 32  # G(·) output side: kernel 16, stride 16 at P = 512 (§3.2) → 32 cells; kernel = P / 32
        min_cam_prob: float = 0.8  # "dropping images x where P_c(x) < 0.8" (§3.1)
        mask_threshold: float = 0.5  # T(·): value NOT IN PAPER (choice)
        renormalize: bool = False  # min-max the averaged map before T (not in the paper)
        require_label: bool = False  # also require label c = 1 for a CAM to enter ψ_c (the paper does not)
        use_masks: bool = True  # false: stop after classify ("ResNet-50+Alignment")
        examples: int = 4  # images in the before/after PNG

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        o = self.options
        if o.euclidean not in ("sum", "mean") or o.anchor_images < 1 or o.smooth_grid < 1:
            raise ValueError(f"method.options: euclidean must be sum|mean, anchor_images and smooth_grid >= 1 ({o})")
        for stage in self.cfg.method.stages:
            tf = self.recipe(stage).transforms
            if any(op["op"] not in FRAME_OPS for op in [*tf.train, *tf.eval]):
                raise ValueError(f"diseasemask stage {stage}: only {FRAME_OPS} ops (the affine refers to the frame)")
        self.fill = black(self.recipe("classify").transforms)

    def input_size(self, stage: str) -> int:
        """The network input side of ``stage`` (its ops are resizes only)."""
        return int(self.recipe(stage).transforms.eval[-1]["size"])

    def smooth_kernel(self) -> int:
        """G's kernel at the align stage's input size (see ``diseasemask_stages.smooth_kernel``)."""
        return smooth_kernel(self.options, self.recipe("align"))

    def build_model(self, stage: str) -> torch.nn.Module:
        """A ResNet-50 ``DiseaseMaskNet`` sized for the stage's input (ψ = 0 until :meth:`init_retrain`)."""
        size = self.input_size(stage)
        if size % RESNET_STRIDE:
            raise ValueError(f"diseasemask stage {stage}: input size {size} must be a multiple of {RESNET_STRIDE}")
        return build_model(
            "diseasemask",
            pretrained=self.model_cfg.pretrained,
            in_chans=self.in_chans(stage),
            mask_size=size // RESNET_STRIDE,
            imagenet_weights=self.model_cfg.imagenet_weights,
        )

    def forward(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Logits of the aligned images."""
        return model(align_images(batch["image"], batch["affine"], self.fill))

    def maps(self, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and CAMs Ŝ warped back to the unaligned (network-input) frame; uncovered cells get the map's min."""
        logits, cams = model.forward_with_maps(align_images(batch["image"], batch["affine"], self.fill))
        lo = cams.float().amin(dim=(2, 3), keepdim=True)
        return logits, warp_maps_back(cams.float() - lo, batch["affine"].float()) + lo

    def init_retrain(self, ctx: StageContext, model: torch.nn.Module) -> None:
        """Continue from classify's best weights with the disease masks set (§3.1 "retrained ... five more epochs")."""
        load_model_weights(ctx.stage_path("classify", "best.pt"), model)
        model.set_masks(torch.from_numpy(np.load(ctx.stage_path("masks", "masks.npy"))))

    def aux_networks(self) -> list[AuxNet]:
        """The alignment net of ``align``, whose five affine parameters the classifier reads as ``affine``."""
        m, tf = self.model_cfg, self.recipe("align").transforms
        build = lambda: build_model(  # noqa: E731  (its trained weights are loaded: no ImageNet download)
            "alignment", pretrained=False, in_chans=tf.channels, imagenet_weights=m.imagenet_weights
        )
        return [AuxNet("affine", "align", "alignment.pt", build, tf, affine_rows, kind="vector", dtype="float32")]

    def stages(self) -> list[Stage]:
        build = lambda name: lambda ctx: self.build_model(name)  # noqa: E731
        o = self.options
        final = "retrain" if o.use_masks else "classify"
        stages: list[Stage] = [
            TrainStage("perceptual", self.recipe("perceptual"), build("perceptual")),
            FunctionStage(
                "align",
                partial(
                    run_align,
                    options=o,
                    recipe=self.recipe("align"),
                    model_cfg=self.model_cfg,
                    perceptual=partial(self.build_model, "perceptual"),
                ),
            ),  # fmt: skip
            TrainStage(
                "classify",
                self.recipe("classify"),
                build("classify"),
                forward=self.forward,
                loader_extras=affine_extras,
            ),
        ]
        if self.options.use_masks:
            stages += [
                FunctionStage(
                    "masks",
                    partial(
                        build_masks,
                        opts=o,
                        recipe=self.recipe("classify"),
                        classifier=partial(self.build_model, "classify"),
                    ),
                ),  # fmt: skip
                TrainStage(
                    "retrain",
                    self.recipe("retrain"),
                    build("retrain"),
                    forward=self.forward,
                    init_from=self.init_retrain,
                    loader_extras=affine_extras,
                ),
            ]
        recipe = self.recipe(final)
        stages.append(
            EvalStage(
                "eval",
                build(final),
                weights=lambda ctx: ctx.stage_path(final, "best.pt"),
                transforms=lambda ctx: recipe.transforms,
                maps=self.maps,
                loader_extras=affine_extras,
                published=OmegaConf.to_container(self.cfg.method.published),
            )
        )
        return stages
