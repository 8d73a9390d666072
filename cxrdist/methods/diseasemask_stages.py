"""The two diseasemask stages besides classifier training: ``align`` (kim2021 §3.2) and ``masks`` (§3.1, Eq. 3).

``align``: the anchor A is the mean of up to ``anchor_images`` "No Finding" training images (seeded draw;
each rank sums its share, one all-reduce). The ResNet-18 alignment net is trained with the ``align`` recipe
under DDP on the train split to minimise L_e + L_p (Eq. 7–9) between A and φ(I) = B(G(warp(I))); the
perceptual features are conv2_x..conv5_x of the ``perceptual`` stage's ResNet-50 (frozen). It resumes from its
own checkpoints (``ckpt/``). Then every image of every split gets its five affine parameters in the
``<split>/affine`` vector sidecar (resumable row by row), plus anchor and before/after PNGs.

``masks``: CAMs of the ``classify`` model on aligned training images with P_c ≥ ``min_cam_prob``, flip-summed
for the 7 symmetric box classes, min-max normalised, averaged, thresholded (Eq. 3). Each rank accumulates sums
and counts over its share; one all-reduce makes the result equal to a single-process pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cxrdist import dist
from cxrdist.data.transforms import normalize_batch
from cxrdist.engine.checkpoint import load_trained
from cxrdist.engine.sidecar_writer import fill_split_sidecars, inference_autocast
from cxrdist.engine.stages import StageContext, TrainStage
from cxrdist.engine.train_hooks import TrainHooks
from cxrdist.engine.trainer import Trainer
from cxrdist.eval.figures import plot_image_grid
from cxrdist.labels import BOX_CLASSES
from cxrdist.models import build_model
from cxrdist.models.alignment import smooth, warp
from cxrdist.models.diseasemask import SYMMETRIC_BOX_CLASSES, accumulate_disease_masks, finalize_disease_masks

logger = logging.getLogger(__name__)


def black(transforms: Any) -> Tensor:
    """The normalised value of a black pixel, (1, C, 1, 1): what a warp brings in from outside the image."""
    return normalize_batch(torch.zeros(1, 1, 1, 1), transforms.normalize, transforms.channels)


def affine_rows(net: torch.nn.Module, images: Tensor) -> Tensor:
    """The five affine parameters (s_x, s_y, t_x, t_y, theta) of each image (the ``affine`` sidecar's rows)."""
    return net(images).float()


def align_images(images: Tensor, params: Tensor, fill: Tensor) -> Tensor:
    """The sharp aligned images (kim2021 Eq. 6 without B∘G), padded with ``fill`` (black) outside the original."""
    fill = fill.to(images.device, images.dtype)
    return warp(images - fill, params.to(images.dtype)) + fill


@dataclass
class AlignmentLoss:
    """kim2021 Eq. 9 against a fixed anchor: ``loss(images, params) -> (L_e + weight · L_p, L_e, L_p)``.

    φ(I) = B(G(warp(I))). L_e (Eq. 8): the per-pixel L2 norm (over channels) of A − φ(I), summed over the P×P
    pixels (``euclidean="sum"``, as printed) or averaged (``"mean"``). L_p (Eq. 7): Σ_s ‖F_s(A) − F_s(φ(I))‖_2
    / (C_s H_s W_s) over the perceptual network's stages, norms non-squared as printed. Batch means.
    """

    anchor: Tensor  # (1, C, P, P), normalised like the images
    features: Callable[[Tensor], list[Tensor]]  # conv2_x .. conv5_x of the perceptual network
    fill: Tensor  # what the warp brings in from outside the image (black)
    kernel: int = 16
    euclidean: str = "sum"
    weight: float = 1.0

    def __post_init__(self) -> None:
        with torch.no_grad():
            self.anchor_feats = [f.float() for f in self.features(self.anchor)]

    def __call__(self, images: Tensor, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        phi = smooth(align_images(images, params, self.fill), self.kernel)
        pixel = (phi.float() - self.anchor).square().sum(dim=1).add(1e-12).sqrt().flatten(1)  # eps: grad at 0
        le = pixel.sum(dim=1) if self.euclidean == "sum" else pixel.mean(dim=1)
        feats = zip(self.features(phi), self.anchor_feats)
        lp = sum((f.float() - a).flatten(1).norm(dim=1) / a[0].numel() for f, a in feats)
        return (le + self.weight * lp).mean(), le.mean(), lp.mean()


def compute_anchor(ctx: StageContext, options: Any, recipe: Any) -> tuple[np.ndarray, int]:
    """The anchor (C, H, W), the mean of up to ``anchor_images`` "No Finding" train images normalised like the
    input, and the number of images averaged."""
    count = options.anchor_images
    spec = ctx.loader_spec(
        split="train", train=False, transforms=recipe.transforms, batch=ctx.cfg.loader.eval_batch_per_rank
    )
    loader = ctx.make_loader(spec)
    normal = np.flatnonzero(loader.reader.labels.sum(axis=1) == 0)
    if len(normal) == 0:
        raise ValueError("align: no 'No Finding' image in the train split to build the anchor from")
    chosen = np.sort(np.random.default_rng([ctx.cfg.seed, 2000]).choice(normal, min(count, len(normal)), replace=False))
    mine, b = np.array_split(chosen, ctx.env.world_size)[ctx.env.rank], spec.batch_per_rank
    side = loader.out_size
    total = torch.zeros(recipe.transforms.channels, side, side, dtype=torch.float64, device=ctx.env.device)
    for batch in loader.iterate_indices([mine[i : i + b] for i in range(0, len(mine), b)]):
        total += batch["image"].double().sum(dim=0)
    dist.all_reduce_sum(total)
    return (total / len(chosen)).float().cpu().numpy(), len(chosen)


def smooth_kernel(options: Any, recipe: Any) -> int:
    """G's kernel at the align stage's input size: the same 1/32-of-the-image cells as 16 px at 512 px."""
    size = int(recipe.transforms.eval[-1]["size"])  # the align stage's ops are resizes only
    if size % options.smooth_grid:
        raise ValueError(f"align input {size} is not a multiple of options.smooth_grid={options.smooth_grid}")
    return size // options.smooth_grid


def affine_extras(ctx: StageContext) -> dict[str, Any]:
    """The affine sidecar of the loader's split (``{split}`` is filled in by the loader)."""
    return {"sidecars": {"affine": str(ctx.stage_path("align", "{split}", "affine"))}}


def _perceptual_net(ctx: StageContext, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    return load_trained(build(), ctx.stage_path("perceptual", "best.pt"), ctx.env.device).requires_grad_(False)


class AlignHooks(TrainHooks):
    """The alignment net through the trainer: L_total = L_e + L_p (kim2021 Eq. 9) with its terms in the history;
    no validation (the last weights are kept: five epochs, as the paper trains)."""

    select = False

    def __init__(self, loss_fn: AlignmentLoss, grad_clip: float | None):
        self.loss_fn, self.grad_clip = loss_fn, grad_clip

    def strategy_options(self, trainer: Any) -> dict[str, Any]:
        """DDP with the stage's own clip: SGD at the paper's lr diverges without one."""
        eng = trainer.ctx.cfg.engine
        return {"name": "ddp", "precision": eng.precision, "grad_clip": self.grad_clip, "sync_bn": eng.sync_bn}

    def forward(self, trainer: Any, model: torch.nn.Module, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        return self.loss_fn(batch["image"], model(batch["image"]).float())

    def loss(self, trainer: Any, out: tuple[Tensor, Tensor, Tensor], batch: dict[str, Any]) -> tuple[Tensor, dict]:
        loss, le, lp = out
        return loss, {"euclidean": le, "perceptual": lp}

    def history_row(self, epoch: int, train_loss: float, extras: dict[str, float], metrics: dict[str, Any]) -> dict:
        return {"epoch": epoch, "loss": train_loss, **extras}


def train_alignment(
    ctx: StageContext, opts: Any, recipe: Any, anchor: np.ndarray, *, model_cfg: Any, perceptual: Callable
) -> tuple[torch.nn.Module, list, dict]:
    """Train the alignment net with the trainer (exact mid-epoch resume from ``ckpt/``); return it (unwrapped, eval
    mode), the epoch history and the BatchNorm record. ``perceptual`` builds the perceptual net (its weights: the
    ``perceptual`` stage's)."""
    m = model_cfg
    loss_fn = AlignmentLoss(
        torch.from_numpy(anchor)[None].to(ctx.env.device),
        _perceptual_net(ctx, perceptual).stage_features,
        black(recipe.transforms),
        smooth_kernel(opts, recipe),
        opts.euclidean,
        opts.perceptual_weight,
    )
    build = lambda c: build_model(  # noqa: E731
        "alignment", pretrained=m.pretrained, in_chans=recipe.transforms.channels, imagenet_weights=m.imagenet_weights
    )
    trainer = Trainer(ctx, TrainStage("align", recipe, build, hooks=AlignHooks(loss_fn, opts.align_grad_clip)))
    out = trainer.fit()
    return trainer.strategy.unwrap().eval(), out["history"], out["batchnorm"]


def run_align(
    ctx: StageContext, options: Any, recipe: Any, *, model_cfg: Any, perceptual: Callable[[], torch.nn.Module]
) -> dict[str, Any]:
    """The ``align`` stage: anchor, alignment net, per-split affine sidecars, PNGs (``recipe``: the align stage's;
    ``model_cfg``: the method's model config, for the alignment net; ``perceptual`` builds the perceptual net)."""
    anchor, num_anchor = compute_anchor(ctx, options, recipe)
    if ctx.env.is_main:
        np.save(ctx.stage_dir / "anchor.npy", anchor)
    net, history, batchnorm = train_alignment(ctx, options, recipe, anchor, model_cfg=model_cfg, perceptual=perceptual)
    if ctx.env.is_main:
        torch.save({"model": net.state_dict(), "meta": {"history": history}}, ctx.stage_dir / "alignment.pt")

    def compute(batch: dict[str, Any]) -> np.ndarray:
        with inference_autocast(ctx):
            return affine_rows(net, batch["image"]).cpu().numpy()

    notes = {"params": "(s_x, s_y, t_x, t_y, theta) of kim2021 Eq. 6; see cxrdist/models/alignment.py"}
    out = fill_split_sidecars(ctx, "affine", recipe.transforms, compute, shape=(5,), dtype="float32", kind="vector",
                              notes=notes)  # fmt: skip
    if ctx.env.is_main:
        _align_examples(ctx, options, recipe, net, anchor)
    dist.barrier()
    return {
        "anchor": "anchor.npy",
        "anchor_images": num_anchor,
        "weights": "alignment.pt",
        "sidecar": "{split}/affine",
        "history": history,
        "splits": out,
        "batchnorm": batchnorm,
    }


def _align_examples(ctx: StageContext, opts: Any, recipe: Any, net, anchor: np.ndarray) -> None:
    """anchor.png and alignment.png (val images: before, aligned, B∘G(aligned)); logged to the tracker (rank 0)."""
    loader = ctx.make_loader(
        ctx.loader_spec(split="val", train=False, transforms=recipe.transforms, batch=opts.examples)
    )
    batch = next(loader.iterate_indices([np.arange(min(opts.examples, loader.num_samples))]))
    with torch.no_grad():
        params = net(batch["image"]).float()
    aligned = align_images(batch["image"], params, black(recipe.transforms))
    smoothed = smooth(aligned, smooth_kernel(opts, recipe))
    rows = []
    for i, p in enumerate(params.cpu().tolist()):
        key = loader.reader.keys[int(batch["index"][i])]
        rows.append(
            [
                (f"{key} before", batch["image"][i, 0].cpu().numpy(), None),
                ("aligned " + ",".join(f"{v:.2f}" for v in p), aligned[i, 0].cpu().numpy(), None),
                ("B∘G(aligned)", smoothed[i, 0].cpu().numpy(), None),
                ("anchor", anchor[0], None),
            ]
        )
    images = {
        "anchor": str(plot_image_grid([[("anchor", anchor[0], None)]], ctx.stage_dir / "anchor.png")),
        "before_after": str(plot_image_grid(rows, ctx.stage_dir / "alignment.png", "alignment (val)")),
    }
    ctx.tracker.log_images(images, step=0, prefix="align")


def build_masks(
    ctx: StageContext, opts: Any, recipe: Any, *, classifier: Callable[[], torch.nn.Module]
) -> dict[str, Any]:
    """The ``masks`` stage: ψ (8, h, w) from CAMs of aligned training images (kim2021 Eq. 3) → masks.npy + PNGs
    (``recipe``: the classify stage's; ``classifier`` builds its network, loaded with classify's best weights)."""
    k = len(BOX_CLASSES)
    model = load_trained(classifier(), ctx.stage_path("classify", "best.pt"), ctx.env.device)
    batch_size = ctx.cfg.loader.eval_batch_per_rank
    spec = ctx.loader_spec(
        split="train", train=False, transforms=recipe.transforms, batch=batch_size, **affine_extras(ctx)
    )
    sums = torch.zeros(k, *model.psi.shape[-2:], dtype=torch.float64, device=ctx.env.device)
    counts = torch.zeros(k, dtype=torch.float64, device=ctx.env.device)
    fill = black(recipe.transforms)
    with torch.no_grad():
        for batch in ctx.make_loader(spec):  # this rank's share of the train split
            with inference_autocast(ctx):
                logits, cams = model.forward_with_maps(align_images(batch["image"], batch["affine"], fill))
            keep = torch.sigmoid(logits[:, :k].float()) >= opts.min_cam_prob  # Eq. 2 probability, §3.1 filter
            if opts.require_label:
                keep &= batch["labels"][:, :k] > 0
            s, c = accumulate_disease_masks(cams[:, :k].float(), SYMMETRIC_BOX_CLASSES, keep)
            sums, counts = sums + s, counts + c
    dist.all_reduce_sum(sums)  # sums and counts of disjoint shares add up: the single-process result
    dist.all_reduce_sum(counts)
    psi = finalize_disease_masks(sums, counts, opts.mask_threshold, opts.renormalize).cpu()
    mean = (sums / counts.clamp_min(1).view(-1, 1, 1)).float().cpu()
    if ctx.env.is_main:
        np.save(ctx.stage_dir / "masks.npy", psi.numpy())
        np.save(ctx.stage_dir / "mean_maps.npy", mean.numpy())
        _mask_pngs(ctx, mean.numpy(), psi.numpy(), counts.cpu().long().tolist())
    dist.barrier()
    return {
        "masks": "masks.npy",
        "mean_maps": "mean_maps.npy",
        "classes": list(BOX_CLASSES),
        "kept_maps": dict(zip(BOX_CLASSES, counts.cpu().long().tolist())),
        "mask_area": dict(zip(BOX_CLASSES, psi.mean(dim=(1, 2)).tolist())),
    }


def _mask_pngs(ctx: StageContext, mean: np.ndarray, psi: np.ndarray, counts: list[int]) -> None:
    """masks/<class>.png: the averaged normalised CAM and ψ drawn on the anchor (as kim2021 Fig. 3); logged."""
    anchor = np.load(ctx.stage_path("align", "anchor.npy"))[0]
    images = {}
    for i, name in enumerate(BOX_CLASSES):
        panels = [(f"{name}: mean N(L̄), n={counts[i]}", mean[i], None), ("ψ on the anchor", anchor, psi[i])]
        images[name] = str(plot_image_grid([panels], ctx.stage_dir / "masks" / f"{name}.png"))
    ctx.tracker.log_images(images, step=0, prefix="masks")
