"""The two lungheart stages besides the classifier: ``seg`` trains the U-Net, ``masks`` writes the union masks.

``seg`` (fang2021 §3.3): a U-Net with sigmoid outputs for left lung, right lung and heart, soft Dice loss,
trained on the JSRT + SCR set (:mod:`cxrdist.data.jsrt`) with the ``seg`` recipe; the model with the lowest
validation loss is kept (choice). Distributed: every rank holds the (small) set in memory and each
global batch is sharded across ranks under DDP, so a multi-GPU job trains one model with the recipe's global
batch; validation is computed on every rank over the whole held-out part and rank 0's numbers decide.
Killed mid-stage it restarts from scratch (a few minutes of work at most).

``masks``: the best U-Net runs over every image of every split (train, val and the evaluation splits) with the
``seg`` recipe's eval transform, which keeps the whole stored frame. The union of the thresholded channels
(fang2021's M_g) is area-averaged to ``mask_size``² and stored fractional as a float16 "image" sidecar
``<split>/mask``, so the classifier's loader crops it with the image. Resumable row by row (sidecar_writer).
"""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cxrdist import dist
from cxrdist.data.jsrt import STRUCTURES, load_segmentation_set, split_set
from cxrdist.data.loaders.memory import MemoryLoader
from cxrdist.data.reader import ShardReader
from cxrdist.data.sidecar import Sidecar
from cxrdist.data.transforms import (
    apply_geometry_torch,
    normalize_batch,
    sample_geometries,
    sample_uniforms,
    uniform_columns,
)
from cxrdist.engine.checkpoint import load_model_weights, load_trained
from cxrdist.engine.sidecar_writer import fill_split_sidecars, inference_autocast
from cxrdist.engine.stages import StageContext, TrainStage
from cxrdist.engine.train_hooks import TrainHooks
from cxrdist.engine.trainer import Trainer
from cxrdist.eval.figures import plot_image_grid
from cxrdist.models import build_model
from cxrdist.models.unet import soft_dice_loss, union_mask

logger = logging.getLogger(__name__)
NAMES = tuple(s.replace(" ", "_") for s in STRUCTURES)  # left_lung, right_lung, heart: metric keys


def mask_rows(net: torch.nn.Module, images: torch.Tensor, threshold: float, size: int) -> torch.Tensor:
    """fang2021's M_g of a batch: the union of the thresholded U-Net channels, area-averaged to ``size``² (B, s, s)."""
    union = union_mask(net(images).float(), threshold)
    return F.adaptive_avg_pool2d(union, size)[:, 0]  # area fraction: the mask stays fractional


def seg_root(ctx: StageContext, root: str | None) -> Path:
    """``method.options.seg_root``, else the demo layout ``<data.root>/../phantom/segmentation``."""
    return Path(root) if root else Path(ctx.cfg.data.root).parent / "phantom" / "segmentation"


def _ops(transforms: Any, train: bool) -> list[dict[str, Any]]:
    ops = [dict(o) for o in (transforms.train if train else transforms.eval)]
    if any(o["op"] == "hflip" for o in ops):
        raise ValueError("seg transforms: hflip would swap the left and right lung channels; remove it")
    return ops


def seg_batch(sset, indices: np.ndarray, transforms: Any, train: bool, seed: int, epoch: int, positions=None):
    """Images (B, C, H, W) normalised and target masks (B, 3, H, W) 0/1 after the recipe's geometry."""
    ops, side = _ops(transforms, train), sset.images.shape[-1]
    images, masks = [], []
    u = sample_uniforms(seed, epoch, positions, uniform_columns(ops)) if train and positions is not None else None
    for i, g in zip(indices, sample_geometries(ops, np.full((len(indices), 2), side), u)):
        images.append(apply_geometry_torch(torch.from_numpy(sset.images[i]), g))
        masks.append(torch.cat([apply_geometry_torch(torch.from_numpy(m), g) for m in sset.masks[i]]) >= 0.5)
    x = normalize_batch(torch.stack(images), transforms.normalize, transforms.channels)
    return x, torch.stack(masks).float()


@torch.no_grad()
def evaluate_seg(model, sset, indices: np.ndarray, transforms: Any, device, batch: int, threshold: float) -> dict:
    """Soft Dice loss and hard Dice per structure over ``indices`` (pooled over all their pixels)."""
    model.eval()
    soft, hard = torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
    for s in range(0, len(indices), batch):
        x, y = seg_batch(sset, indices[s : s + batch], transforms, False, 0, 0)
        probs = torch.sigmoid(model(x.to(device)).float()).cpu()
        for acc, p in ((soft, probs), (hard, (probs >= threshold).float())):
            acc += torch.stack([(p * y).sum((0, 2, 3)), p.sum((0, 2, 3)), y.sum((0, 2, 3))]).double()
    dice = lambda a: (2 * a[0] + 1) / (a[1] + a[2] + 1)  # noqa: E731  (eps 1: unet.dice_per_channel's)
    return {"val_loss": float(1 - dice(soft).mean()), "val_dice": dict(zip(NAMES, dice(hard).tolist()))}


def _mean_shape_dice(sset, train: np.ndarray, val: np.ndarray, transforms: Any) -> dict[str, float]:
    """Hard Dice on val of the best constant mask: the training masks' mean, thresholded at 0.5 (a baseline)."""
    _, y_train = seg_batch(sset, train, transforms, False, 0, 0)
    _, y_val = seg_batch(sset, val, transforms, False, 0, 0)
    const = (y_train.mean(0, keepdim=True) >= 0.5).float().expand_as(y_val)
    inter, total = (const * y_val).sum((0, 2, 3)), const.sum((0, 2, 3)) + y_val.sum((0, 2, 3))
    return dict(zip(NAMES, ((2 * inter + 1) / (total + 1)).tolist()))


class UNetHooks(TrainHooks):
    """The U-Net through the trainer: JSRT/SCR batches from memory, soft Dice (fang2021 Eq. 2), val Dice.

    The batches are those of the U-Net's own loop before (the sampler's (seed, epoch) permutation of the training
    images, per-sample augmentation seeds by position), now resumable mid-epoch.
    """

    def __init__(self, sset: Any, train: np.ndarray, val: np.ndarray, opts: Any):
        self.sset, self.train, self.val, self.opts = sset, train, val, opts

    def strategy_options(self, trainer: Any) -> dict[str, Any]:
        """DDP: a DeepSpeed engine buys nothing for a few M parameters."""
        eng = trainer.ctx.cfg.engine
        return {"name": "ddp", "precision": eng.precision, "grad_clip": eng.grad_clip, "sync_bn": eng.sync_bn}

    def train_loader(self, trainer: Any) -> MemoryLoader:
        ctx, recipe = trainer.ctx, trainer.recipe
        seed, device = ctx.cfg.seed, ctx.env.device

        def make_batch(indices: np.ndarray, positions: np.ndarray, epoch: int) -> dict[str, Any]:
            x, y = seg_batch(self.sset, indices, recipe.transforms, True, seed, epoch, positions)
            return {"image": x.to(device), "masks": y.to(device)}

        env = ctx.env
        return MemoryLoader(self.train, make_batch, batch_per_rank=trainer.micro, accum=trainer.accum, seed=seed,
                            world_size=env.world_size, rank=env.rank, max_steps=recipe.max_steps_per_epoch)  # fmt: skip

    def forward(self, trainer: Any, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return model(batch["image"])

    def loss(self, trainer: Any, out: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        return soft_dice_loss(out.float(), batch["masks"]), {}

    def validate(self, trainer: Any) -> dict[str, Any]:
        ctx, recipe = trainer.ctx, trainer.recipe
        m = evaluate_seg(trainer.strategy.unwrap(), self.sset, self.val, recipe.transforms, ctx.env.device,
                         ctx.cfg.loader.eval_batch_per_rank, self.opts.seg_threshold)  # fmt: skip
        return dist.broadcast_object(m)  # BN running stats may differ across ranks: rank 0's numbers decide

    def describe(self, metrics: dict[str, Any]) -> str:
        return f"val loss {metrics['val_loss']:.4f}, Dice {metrics['val_dice']}"


def train_unet(ctx: StageContext, opts: Any, recipe: Any) -> dict[str, Any]:
    """The ``seg`` stage: train the U-Net (the trainer: exact mid-epoch resume); write ``best.pt`` and example PNGs;
    return the val Dice per structure (``opts``: the method's options; ``recipe``: the seg stage's)."""
    sizes = [o["size"] for o in [*recipe.transforms.train, *recipe.transforms.eval] if o["op"].startswith("resize")]
    sset = load_segmentation_set(seg_root(ctx, opts.seg_root), max(sizes or [256]))
    train, val = split_set(len(sset.names), opts.seg_val_fraction, ctx.cfg.seed)
    if len(train) < recipe.global_batch or recipe.epochs < 1:
        raise ValueError(
            f"seg: {len(train)} training images for global_batch {recipe.global_batch}, {recipe.epochs} epochs"
        )
    build = lambda c: build_model("unet", base_width=opts.unet_width, in_chans=recipe.transforms.channels)  # noqa: E731
    out = Trainer(ctx, TrainStage("seg", recipe, build, hooks=UNetHooks(sset, train, val, opts))).fit()
    best = out["history"][out["best_epoch"]]
    if ctx.env.is_main:
        _seg_examples(ctx, sset, val[: opts.examples], recipe.transforms, opts)
    dist.barrier()
    return {
        "weights": "best.pt",
        "best_epoch": out["best_epoch"],
        "val_loss": best["val_loss"],
        "val_dice": best["val_dice"],
        "val_dice_mean_shape_baseline": _mean_shape_dice(sset, train, val, recipe.transforms),
        "num_train": len(train),
        "num_val": len(val),
        "history": out["history"],
        "seg_root": str(seg_root(ctx, opts.seg_root)),
        "micro_batch": out["micro_batch"],
        "accum": out["accum"],
        "batchnorm": out["batchnorm"],
    }


def _seg_examples(ctx: StageContext, sset, indices: np.ndarray, transforms: Any, opts: Any) -> None:
    """PNG: held-out images with the true and predicted union masks (rank 0)."""
    model = build_model("unet", base_width=opts.unet_width, in_chans=transforms.channels)
    load_model_weights(ctx.stage_dir / "best.pt", model)
    x, y = seg_batch(sset, indices, transforms, False, 0, 0)
    with torch.no_grad():
        pred = union_mask(model.eval()(x), opts.seg_threshold)[:, 0]
    grey = x[:, 0].numpy()
    rows = [
        [(f"{sset.names[i]} truth", grey[n], y[n].amax(0).numpy()), ("U-Net", grey[n], pred[n].numpy())]
        for n, i in enumerate(indices)
    ]
    path = plot_image_grid(rows, ctx.stage_dir / "examples.png", "U-Net union mask (held-out JSRT/SCR)")
    ctx.tracker.log_images({"examples": str(path)}, step=0, prefix="seg")


def write_masks(ctx: StageContext, opts: Any, recipe: Any) -> dict[str, Any]:
    """The ``masks`` stage: the union mask of every image of every split as the ``<split>/mask`` sidecar
    (``opts``: the method's options; ``recipe``: the seg stage's, whose eval transforms the U-Net saw)."""
    size = opts.mask_size
    unet = build_model("unet", base_width=opts.unet_width, in_chans=recipe.transforms.channels)
    model = load_trained(unet, ctx.stage_path("seg", "best.pt"), ctx.env.device)

    def compute(batch: dict[str, Any]) -> np.ndarray:
        with inference_autocast(ctx):
            return mask_rows(model, batch["image"], opts.seg_threshold, size).float().cpu().numpy()

    notes = {
        "what": "fang2021 M_g: union of U-Net left lung, right lung, heart (threshold "
        f"{opts.seg_threshold}), area fraction over the whole stored frame at {size}x{size}"
    }
    out = fill_split_sidecars(
        ctx, "mask", recipe.transforms, compute, shape=(size, size), dtype="float16", kind="image", notes=notes
    )
    if ctx.env.is_main:
        _mask_examples(ctx, opts.examples)
    dist.barrier()
    return {"sidecar": "{split}/mask", "mask_size": size, "splits": out}


def _mask_examples(ctx: StageContext, count: int) -> None:
    """PNG: training images with their stored union masks, exactly as the sidecar holds them (rank 0)."""
    reader = ShardReader(ctx.cfg.data.root, "train")
    side = Sidecar(ctx.stage_dir / "train" / "mask", reader.keys)
    rows = [
        [(reader.keys[i], np.asarray(Image.open(BytesIO(reader.jpeg(i))).convert("L")), side.rows([i])[0])]
        for i in range(min(count, len(reader)))
    ]
    path = plot_image_grid([sum(rows, [])], ctx.stage_dir / "examples.png", "union lung/heart masks (train)")
    ctx.tracker.log_images({"examples": str(path)}, step=0, prefix="masks")
