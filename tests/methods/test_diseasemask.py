"""diseasemask (kim2021): the align stage (anchor, identity sidecar, loss recovers a known affine), CAMs warped
back to the original frame, the masks stage (distributed = single process), retraining from the masks, and the
whole method through run_local at world sizes 1 and 2 with a restart."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrdist.config import compose
from cxrdist.data.reader import ShardReader
from cxrdist.data.sidecar import Sidecar
from cxrdist.dist import DistEnv
from cxrdist.engine.checkpoint import save_model_weights
from cxrdist.engine.pipeline import read_done, stage_dirs
from cxrdist.engine.stages import StageContext
from cxrdist.log import Tracker
from cxrdist.methods import get_method
from cxrdist.methods.diseasemask_stages import (
    AlignmentLoss,
    black,
    build_masks,
    compute_anchor,
    run_align,
    train_alignment,
)
from cxrdist.models.alignment import warp, warp_maps_back
from cxrdist.models.base import Classifier
from cxrdist.run.local import run_local
from testkit.resume import Killed, kill_after_checkpoint
from testkit.tiny_methods import diseasemask_overrides

SPLITS = ("train", "val", "test", "bbox")
IDENTITY = [1.0, 1.0, 0.0, 0.0, 0.0]


def dm_cfg(shards: Path, run_dir: Path, *extra: str):
    """diseasemask at 64 px (2×2 CAMs), one epoch of one step per training stage; every CAM enters the masks."""
    return compose([*diseasemask_overrides(shards), f"run_dir={run_dir}", "logger=none", *extra])


def stage_ctx(cfg, stage: str, dirs: dict[str, Path] | None = None) -> tuple[StageContext, object]:
    """A single-process context for running one stage function in this process."""
    method = get_method("diseasemask")(cfg)
    ctx = StageContext(cfg=cfg, run_dir=Path(cfg.run_dir), env=DistEnv(), tracker=Tracker())
    ctx.stage_dirs = dirs or stage_dirs(Path(cfg.run_dir), method.stages())
    ctx.stage_dir = ctx.stage_dirs[stage]
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    return ctx, method


@pytest.fixture(scope="module")
def dm_run(shard_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_local(dm_cfg(shard_root, tmp_path_factory.mktemp("diseasemask") / "run"), nproc=1)


def test_end_to_end_writes_every_stage_and_restart_skips_them(dm_run: Path, shard_root: Path):
    names = ["00_perceptual", "01_align", "02_classify", "03_masks", "04_retrain", "05_eval"]
    assert sorted(p.name for p in (dm_run / "stages").iterdir()) == names
    stages = dm_run / "stages"
    for png in ("01_align/anchor.png", "01_align/alignment.png", "03_masks/masks/Cardiomegaly.png"):
        assert (stages / png).stat().st_size > 0, png
    assert len(list((stages / "03_masks" / "masks").glob("*.png"))) == 8
    assert list((stages / "05_eval" / "bbox" / "heatmaps").glob("*.png"))
    align = read_done(stages / "01_align")["outputs"]
    assert align["history"][0]["euclidean"] > 0 and align["history"][0]["perceptual"] > 0
    for split in SPLITS:
        keys = ShardReader(shard_root, split).keys
        side = Sidecar(stages / "01_align" / split / "affine", keys)
        assert side.kind == "vector" and side.array.shape == (len(keys), 5) and np.isfinite(side.array).all()
    before = {n: (stages / n / "DONE.json").read_bytes() for n in names}
    run_local(dm_cfg(shard_root, dm_run), nproc=1)  # a restart: every stage is done
    assert {n: (stages / n / "DONE.json").read_bytes() for n in names} == before
    assert (dm_run / "logs" / "rank0.log").read_text().count("DONE.json), skipped") == len(names)


def test_retrain_starts_from_classify_with_the_masks(dm_run: Path, shard_root: Path):
    ctx, method = stage_ctx(dm_cfg(shard_root, dm_run), "retrain")
    model = method.build_model("retrain")
    method.init_retrain(ctx, model)
    masks = torch.from_numpy(np.load(dm_run / "stages" / "03_masks" / "masks.npy"))
    assert masks.shape == (8, 2, 2) and set(masks.unique().tolist()) <= {0.0, 1.0} and masks.sum() > 0
    torch.testing.assert_close(model.psi[:8], masks)
    assert model.psi[8:].abs().sum() == 0  # ψ_c = 0 for the 6 classes without boxes (choice)
    classify = torch.load(dm_run / "stages" / "02_classify" / "best.pt", weights_only=True)["model"]
    torch.testing.assert_close(model.fc.weight.detach(), classify["fc.weight"])
    retrained = torch.load(dm_run / "stages" / "04_retrain" / "best.pt", weights_only=True)["model"]
    torch.testing.assert_close(retrained["psi"][:8], masks)  # the evaluated model carries ψ


def perceptual_of(method):
    """The builder of the method's perceptual net (what its stage list passes to the align stage)."""
    return partial(method.build_model, "perceptual")


def test_align_stage_with_untrained_net_writes_identity_rows(shard_root: Path, tmp_path: Path):
    cfg = dm_cfg(shard_root, tmp_path, "method.stages.align.epochs=0", "method.options.anchor_images=100000")
    ctx, method = stage_ctx(cfg, "align")
    perceptual = ctx.stage_dirs["perceptual"]
    save_model_weights(perceptual / "best.pt", method.build_model("perceptual"), {})  # 0 steps: needs no training
    out = run_align(
        ctx, method.options, method.recipe("align"), model_cfg=method.model_cfg, perceptual=perceptual_of(method)
    )
    for split in SPLITS:
        rows = Sidecar(ctx.stage_dir / split / "affine", ShardReader(shard_root, split).keys).array
        assert np.array_equal(rows, np.tile(np.float32(IDENTITY), (len(rows), 1))), split
    # the anchor is the mean of the (here: all) "No Finding" train images, normalised to [-1, 1]
    loader = ctx.make_loader(ctx.loader_spec(split="train", train=False, transforms=method.recipe("align").transforms,
                                             batch=16))  # fmt: skip
    normal = [b["image"][b["labels"].sum(1) == 0] for b in loader]
    expect = torch.cat(normal).double().mean(0).float().cpu().numpy()  # batches are on the GPU when there is one
    np.testing.assert_allclose(np.load(ctx.stage_dir / "anchor.npy"), expect, atol=1e-5)
    assert out["anchor_images"] == sum(len(n) for n in normal) and out["history"] == []


def test_alignment_trains_with_the_papers_summed_loss(shard_root: Path, tmp_path: Path):
    """Eq. 8 summed over the pixels (default) with the recipe's SGD lr 1e-3 and the gradient clip: the learned
    alignment brings the training images closer to the anchor than the identity does (kim2021 Eq. 9)."""
    cfg = dm_cfg(shard_root, tmp_path, "method.stages.align.epochs=3", "method.stages.align.global_batch=16",
                 "method.stages.align.max_steps_per_epoch=null")  # fmt: skip
    ctx, method = stage_ctx(cfg, "align")
    assert method.options.euclidean == "sum"
    save_model_weights(ctx.stage_dirs["perceptual"] / "best.pt", method.build_model("perceptual"), {})
    anchor, _ = compute_anchor(ctx, method.options, method.recipe("align"))
    net, history, _ = train_alignment(ctx, method.options, method.recipe("align"), anchor, model_cfg=method.model_cfg,
                                      perceptual=perceptual_of(method))  # fmt: skip
    recipe = method.recipe("align")
    no_perceptual = lambda x: [x.mean((1, 2, 3), keepdim=True)]  # noqa: E731  (only L_e is compared)
    loss_fn = AlignmentLoss(
        torch.from_numpy(anchor)[None], no_perceptual, black(recipe.transforms), method.smooth_kernel()
    )
    loader = ctx.make_loader(ctx.loader_spec(split="train", train=False, transforms=recipe.transforms, batch=32))
    le = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for batch in loader:
            ident = torch.tensor([IDENTITY]).expand(len(batch["image"]), 5)
            le += torch.stack([loss_fn(batch["image"], ident)[1], loss_fn(batch["image"], net(batch["image"]))[1]])
    assert le[1] < 0.98 * le[0], (le.tolist(), history)
    assert len(history) == 3 and all(np.isfinite(h["euclidean"]) for h in history)


def _blobs(size: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    img = torch.zeros(size, size)
    for cx, cy, sx, sy in [(-0.35, -0.3, 0.18, 0.1), (0.3, -0.2, 0.1, 0.2), (0.0, 0.4, 0.25, 0.12)]:
        img += torch.exp(-(((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2) / 2)
    return img.view(1, 1, size, size)


@pytest.mark.parametrize("euclidean", ["sum", "mean"])
def test_stage_loss_recovers_a_known_affine(euclidean: str):
    """Eq. 9 with Eq. 8 summed over the P×P pixels (the paper's form, default) or averaged (the option)."""
    anchor = _blobs(32)
    truth = torch.tensor([[1.1, 0.92, 0.1, -0.08, 0.15]])
    image = warp_maps_back(anchor, truth)  # image(q) = anchor(A⁻¹ q), so warp(image, truth) is the anchor
    conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    feats = lambda x: [torch.relu(conv(x))]  # noqa: E731
    loss_fn = AlignmentLoss(anchor, feats, torch.zeros(1, 1, 1, 1), kernel=2, euclidean=euclidean)
    assert AlignmentLoss(anchor, feats, torch.zeros(1, 1, 1, 1)).euclidean == "sum"
    params = torch.tensor([IDENTITY], requires_grad=True)
    opt = torch.optim.Adam([params], lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        loss, le, lp = loss_fn(image, params)
        loss.backward()
        opt.step()
    assert (params.detach() - truth).abs().max() < 0.03, params
    per_pixel = le / (32 * 32) if euclidean == "sum" else le
    assert per_pixel < 0.05 and lp >= 0


class _ImageAsMaps(Classifier):
    """A stub 'classifier' whose 14 maps are its (aligned) input image: the maps are easy to predict."""

    num_classes = 14

    def forward_with_maps(self, x):
        maps = x[:, :1].expand(-1, 14, -1, -1)
        return maps.mean((2, 3)), maps


def test_eval_maps_are_warped_back_to_the_original_frame(shard_root: Path, tmp_path: Path):
    _, method = stage_ctx(dm_cfg(shard_root, tmp_path), "eval")
    image = torch.full((1, 3, 64, 64), -1.0)
    image[..., 20:36, 12:30] = 1.0  # a bright box in the original frame
    params = torch.tensor([[1.2, 0.85, 0.15, -0.1, 0.2]])
    _, maps = method.maps(_ImageAsMaps(), {"image": image, "affine": params})
    aligned = method.forward(_ImageAsMaps(), {"image": image, "affine": params})
    assert maps.shape == (1, 14, 64, 64) and aligned.shape == (1, 14)
    back, box = maps[0, 0] > 0, image[0, 0] > 0
    assert (back & box).sum() / (back | box).sum() > 0.85  # the box lands where it was, not where it was aligned to
    moved = warp(image[:, :1], params)[0, 0] > 0
    assert (moved & box).sum() / (moved | box).sum() < 0.5  # (the aligned box itself is elsewhere)


@pytest.mark.slow
def test_two_ranks_end_to_end_and_masks_equal_one_process(shard_root: Path, tmp_path: Path):
    run = run_local(dm_cfg(shard_root, tmp_path / "w2", "eval.heatmap_examples=0"), nproc=2)
    assert read_done(run / "stages" / "03_masks")["world_size"] == 2
    for split in SPLITS:
        out = read_done(run / "stages" / "01_align")["outputs"]["splits"][split]
        assert out["computed"] == out["rows"] == len(ShardReader(shard_root, split))
    cfg = dm_cfg(shard_root, run)
    dirs = stage_dirs(run, get_method("diseasemask")(cfg).stages()) | {"masks": tmp_path / "masks1"}
    ctx, method = stage_ctx(cfg, "masks", dirs)
    single = build_masks(
        ctx, method.options, method.recipe("classify"), classifier=partial(method.build_model, "classify")
    )
    assert single["kept_maps"] == read_done(run / "stages" / "03_masks")["outputs"]["kept_maps"]
    two = run / "stages" / "03_masks"
    assert np.load(two / "mean_maps.npy").max() > 0  # a non-trivial comparison: maps were kept and summed
    assert np.array_equal(np.load(ctx.stage_dir / "masks.npy"), np.load(two / "masks.npy"))
    np.testing.assert_allclose(np.load(ctx.stage_dir / "mean_maps.npy"), np.load(two / "mean_maps.npy"), atol=1e-6)


def test_without_masks_stops_after_classify():
    cfg = compose(["method=diseasemask", "data.root=/x", "method.options.use_masks=false"])
    assert [s.name for s in get_method("diseasemask")(cfg).stages()] == ["perceptual", "align", "classify", "eval"]
    with pytest.raises(ValueError, match="only .* ops"):
        get_method("diseasemask")(compose(["method=diseasemask", "data.root=/x",
                                           "method.stages.classify.transforms.train=[{op: hflip}]"]))  # fmt: skip


def test_alignment_resumes_bit_identical_after_a_mid_epoch_kill(
    shard_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The alignment net runs through the trainer: killed after a mid-epoch checkpoint (epoch 2, step 1 of 3), the
    training run again ends with the weights and history (L_e, L_p means) of an uninterrupted run."""
    extra = ("method.stages.align.epochs=2", "method.stages.align.max_steps_per_epoch=3", "engine.ckpt_every_steps=1")

    def prepare(run: Path):
        ctx, method = stage_ctx(dm_cfg(shard_root, run, *extra), "align")
        torch.manual_seed(0)  # the same (untrained) perceptual net in both runs
        save_model_weights(ctx.stage_dirs["perceptual"] / "best.pt", method.build_model("perceptual"), {})
        anchor, _ = compute_anchor(ctx, method.options, method.recipe("align"))
        return ctx, method, anchor

    def train(ctx, method, anchor):
        return train_alignment(ctx, method.options, method.recipe("align"), anchor, model_cfg=method.model_cfg,
                               perceptual=perceptual_of(method))  # fmt: skip

    ref_net, ref_history, _ = train(*prepare(tmp_path / "ref"))
    ctx, method, anchor = prepare(tmp_path / "killed")
    with monkeypatch.context() as m:
        kill_after_checkpoint(m, step=4)
        with pytest.raises(Killed):
            train(ctx, method, anchor)
    net, history, _ = train(ctx, method, anchor)
    a, b = ref_net.state_dict(), net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert history == ref_history and len(history) == 2 and history[1]["euclidean"] > 0
