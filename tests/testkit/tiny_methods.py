"""Tiny budgets for the multi-stage methods, shared by their own tests and the launcher/Slurm tests."""

from __future__ import annotations

from pathlib import Path

CROP = "[{op: resize, size: 72}, {op: center_crop, size: 64}]"
FRAME = "[{op: resize, size: 64}]"
COMMON = [
    "loader.workers=0",
    "loader.eval_batch_per_rank=16",
    "eval.heatmap_examples=1",
    "method.model.pretrained=false",
]


def lungheart_overrides(shards: Path, phantom: Path) -> list[str]:
    """lungheart at 64 px with a one-epoch, two-step budget per stage (U-Net width 8, 16-px masks)."""
    return [
        "method=lungheart",
        f"data.root={shards}",
        *COMMON,
        f"method.options.seg_root={phantom / 'segmentation'}",
        "method.options.unet_width=8",
        "method.options.mask_size=16",
        "method.options.examples=2",
        "method.stages.seg.epochs=1",
        "method.stages.seg.global_batch=2",
        f"method.stages.seg.transforms.train={FRAME}",
        f"method.stages.seg.transforms.eval={FRAME}",
        "method.stages.classify.epochs=1",
        "method.stages.classify.global_batch=8",
        "method.stages.classify.max_steps_per_epoch=2",
        f"method.stages.classify.transforms.train={CROP}",
        f"method.stages.classify.transforms.eval={CROP}",
    ]


def diseasemask_overrides(shards: Path) -> list[str]:
    """diseasemask at 64 px (2×2 CAMs), one epoch of one step per training stage; every CAM enters the masks."""
    stages = []
    for s in ("perceptual", "align", "classify", "retrain"):
        stages += [f"method.stages.{s}.epochs=1", f"method.stages.{s}.global_batch=4",
                   f"method.stages.{s}.max_steps_per_epoch=1", f"method.stages.{s}.transforms.train={FRAME}",
                   f"method.stages.{s}.transforms.eval={FRAME}"]  # fmt: skip
    return [
        "method=diseasemask",
        f"data.root={shards}",
        *COMMON,
        "method.options.anchor_images=16",
        "method.options.examples=2",
        "method.options.min_cam_prob=0.0",  # an untrained net never reaches P_c >= 0.8: keep every map
        *stages,
    ]


def attention_overrides(method: str, shards: Path) -> list[str]:
    """ma, cral or amdensenet at 32 px, one epoch of one step at global batch 4 per training stage."""
    train = "[{op: resize, size: 36}, {op: random_resized_crop, size: 32}, {op: hflip}]"
    evals = "[{op: resize, size: 36}, {op: center_crop, size: 32}]"
    stages = {"ma": ("base", "retrain")}.get(method, ("train",))
    out = [f"method={method}", f"data.root={shards}", *COMMON]
    for s in stages:
        out += [f"method.stages.{s}.epochs=1", f"method.stages.{s}.global_batch=4",
                f"method.stages.{s}.max_steps_per_epoch=1", f"method.stages.{s}.transforms.train={train}",
                f"method.stages.{s}.transforms.eval={evals}"]  # fmt: skip
    return out


def method_overrides(method: str, shards: Path, phantom: Path) -> list[str]:
    """The tiny budget of any of the five papers' methods."""
    if method == "lungheart":
        return lungheart_overrides(shards, phantom)
    if method == "diseasemask":
        return diseasemask_overrides(shards)
    return attention_overrides(method, shards)
