"""lungheart (fang2021): the U-Net stage, the masks sidecar (coverage, resume), the classifier's mask join, and the
whole method through run_local at world sizes 1 and 2 with a restart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrdist.config import compose
from cxrdist.data.reader import ShardReader
from cxrdist.data.sidecar import Sidecar, filled_mask, mark_filled
from cxrdist.dist import DistEnv
from cxrdist.engine.pipeline import read_done, stage_dirs
from cxrdist.engine.stages import StageContext
from cxrdist.log import Tracker
from cxrdist.methods import get_method
from cxrdist.methods.lungheart import maps
from cxrdist.methods.lungheart_stages import train_unet, write_masks
from cxrdist.run.local import run_local
from testkit.resume import Killed, kill_after_checkpoint
from testkit.tiny_methods import lungheart_overrides

SPLITS = ("train", "val", "test", "bbox")


def lh_cfg(shards: Path, phantom: Path, run_dir: Path, *extra: str):
    """lungheart at 64 px with a one-epoch, two-step budget per stage."""
    return compose([*lungheart_overrides(shards, phantom), f"run_dir={run_dir}", "logger=none", *extra])


def stage_ctx(cfg, stage: str, dirs: dict[str, Path] | None = None) -> tuple[StageContext, object]:
    """A single-process context for running one stage function in this process."""
    method = get_method("lungheart")(cfg)
    ctx = StageContext(cfg=cfg, run_dir=Path(cfg.run_dir), env=DistEnv(), tracker=Tracker())
    ctx.stage_dirs = dirs or stage_dirs(Path(cfg.run_dir), method.stages())
    ctx.stage_dir = ctx.stage_dirs[stage]
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    return ctx, method


@pytest.fixture(scope="module")
def lh_run(shard_root: Path, phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("lungheart") / "run"
    return run_local(lh_cfg(shard_root, phantom_root, run), nproc=1)


def test_end_to_end_writes_every_stage_and_restart_skips_them(lh_run: Path, shard_root, phantom_root):
    names = ["00_seg", "01_masks", "02_classify", "03_eval"]
    assert sorted(p.name for p in (lh_run / "stages").iterdir()) == names
    seg = read_done(lh_run / "stages" / "00_seg")["outputs"]
    assert set(seg["val_dice"]) == {"left_lung", "right_lung", "heart"} and seg["num_val"] == 2
    for png in ("00_seg/examples.png", "01_masks/examples.png", "03_eval/test/roc.png"):
        assert (lh_run / "stages" / png).stat().st_size > 0, png
    assert list((lh_run / "stages" / "03_eval" / "bbox" / "heatmaps").glob("*.png"))
    before = {n: (lh_run / "stages" / n / "DONE.json").read_bytes() for n in names}
    run_local(lh_cfg(shard_root, phantom_root, lh_run), nproc=1)  # a restart: every stage is done
    assert {n: (lh_run / "stages" / n / "DONE.json").read_bytes() for n in names} == before
    assert (lh_run / "logs" / "rank0.log").read_text().count("DONE.json), skipped") == len(names)


def test_masks_sidecar_covers_every_key_once(lh_run: Path, shard_root: Path):
    out = read_done(lh_run / "stages" / "01_masks")["outputs"]["splits"]
    for split in SPLITS:
        keys = ShardReader(shard_root, split).keys
        side = Sidecar(lh_run / "stages" / "01_masks" / split / "mask", keys)  # checks keys and filled rows
        assert side.kind == "image" and side.array.shape == (len(keys), 16, 16) and side.array.dtype == np.float16
        assert float(side.array.min()) >= 0.0 and float(side.array.max()) <= 1.0
        assert out[split] == {"rows": len(keys), "computed": len(keys), "already_filled": 0}


def test_masks_stage_resume_recomputes_only_missing_rows(lh_run: Path, shard_root, phantom_root, tmp_path: Path):
    cfg = lh_cfg(shard_root, phantom_root, tmp_path)
    dirs = stage_dirs(lh_run, get_method("lungheart")(cfg).stages()) | {"masks": tmp_path / "masks"}
    shutil.copytree(lh_run / "stages" / "01_masks", dirs["masks"])
    path = dirs["masks"] / "train" / "mask"
    reference = np.load(path.with_suffix(".npy")).copy()
    lost = np.arange(5, 12)  # as if a kill came before these rows were marked
    filled = filled_mask(path)
    filled[lost] = False
    np.save(path.with_suffix(".filled.npy"), filled)
    rows = np.load(path.with_suffix(".npy"), mmap_mode="r+")
    rows[lost] = np.nan
    rows.flush()
    ctx, method = stage_ctx(cfg, "masks", dirs)
    out = write_masks(ctx, method.options, method.recipe("seg"))
    assert out["splits"]["train"] == {
        "rows": len(reference),
        "computed": len(lost),
        "already_filled": len(reference) - 7,
    }
    assert all(out["splits"][s]["computed"] == 0 for s in ("val", "test", "bbox"))
    np.testing.assert_allclose(np.load(path.with_suffix(".npy")).astype(np.float32), reference, atol=1e-2)
    mark_filled(path, lost)  # idempotent on a filled sidecar


def test_classifier_batch_carries_the_cropped_mask(lh_run: Path, shard_root, phantom_root):
    cfg = lh_cfg(shard_root, phantom_root, lh_run)
    ctx, method = stage_ctx(cfg, "classify")
    recipe = method.recipe("classify")
    spec = ctx.loader_spec(split="val", train=False, transforms=recipe.transforms, batch=4, **method.loader_extras(ctx))
    batch = next(iter(ctx.make_loader(spec)))
    batch = {k: v.cpu() if torch.is_tensor(v) else v for k, v in batch.items()}  # on the GPU when there is one
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 1, 64, 64)
    # the stored 16² full-frame mask, cropped like the image (resize 72 → crop 64 = the central 8/9 of the frame)
    stored = torch.from_numpy(np.load(lh_run / "stages" / "01_masks" / "val" / "mask.npy")[:4].astype(np.float32))
    centre = torch.nn.functional.interpolate(stored[:, None], size=(72, 72), mode="bilinear")[..., 4:68, 4:68]
    assert (batch["mask"] - centre).abs().mean() < 0.05
    model = method.build_model("classify").eval()
    with torch.no_grad():
        logits, cams = maps(model, batch)
        assert logits.shape == (4, 14) and cams.shape == (4, 14, 2, 2)
        masked = model(batch["image"], mask=batch["mask"])
        halved = model(batch["image"], mask=0.5 * batch["mask"])
        _, cams_half = maps(model, batch | {"mask": 0.5 * batch["mask"]})
    torch.testing.assert_close(masked, logits)
    # F_l = F_g ⊙ M_g before GAP + FC: the logits minus the bias and the CAMs of F_l are linear in the mask
    bias = model.classifier.bias
    torch.testing.assert_close(halved - bias, 0.5 * (masked - bias), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cams_half, 0.5 * cams, atol=1e-5, rtol=1e-4)


def test_unet_beats_a_constant_mask(shard_root: Path, phantom_root: Path, tmp_path: Path):
    cfg = lh_cfg(shard_root, phantom_root, tmp_path, "method.stages.seg.epochs=20", "method.options.unet_width=16")
    ctx, method = stage_ctx(cfg, "seg")
    out = train_unet(ctx, method.options, method.recipe("seg"))
    from cxrdist.data.jsrt import load_segmentation_set, split_set

    sset = load_segmentation_set(phantom_root / "segmentation", 64)
    val = sset.masks[split_set(len(sset.names), 0.2, cfg.seed)[1]].astype(np.float64)
    ones = {
        k: (2 * val[:, c].sum() + 1) / (val[:, c].sum() + val[:, c].size + 1) for c, k in enumerate(out["val_dice"])
    }
    for k, dice in out["val_dice"].items():
        assert dice > ones[k] + 0.2, (k, dice, ones[k])  # an all-ones mask scores 0.1–0.3
    assert np.mean(list(out["val_dice"].values())) > 0.7
    assert (ctx.stage_dir / "best.pt").is_file() and (ctx.stage_dir / "examples.png").is_file()


def test_ablations_compose():
    cfg = compose(["method=lungheart", "data.root=/x", "method.model.use_mask=false", "method.model.pretrained=false"])
    method = get_method("lungheart")(cfg)
    assert [s.name for s in method.stages()] == ["classify", "eval"]
    model = method.build_model("classify").eval()
    with pytest.raises(ValueError, match="use_mask=False but a mask was passed"):
        model(torch.zeros(1, 3, 64, 64), mask=torch.ones(1, 1, 64, 64))
    cfg = compose(
        ["method=lungheart", "data.root=/x", "method.model.multiscale=false", "method.model.pretrained=false"]
    )
    assert isinstance(get_method("lungheart")(cfg).build_model("classify").input_attention, torch.nn.Identity)


@pytest.mark.slow
def test_two_ranks_end_to_end(shard_root: Path, phantom_root: Path, tmp_path: Path):
    run = run_local(lh_cfg(shard_root, phantom_root, tmp_path / "w2", "eval.heatmap_examples=0"), nproc=2)
    masks = read_done(run / "stages" / "01_masks")
    assert masks["world_size"] == 2
    for split in SPLITS:
        rows = masks["outputs"]["splits"][split]
        assert rows["computed"] == rows["rows"] == len(ShardReader(shard_root, split))  # every key exactly once
        assert filled_mask(run / "stages" / "01_masks" / split / "mask").all()
    assert read_done(run / "stages" / "02_classify")["outputs"]["world_size"] == 2
    assert json.loads((run / "stages" / "03_eval" / "test" / "metrics.json").read_text())["num_samples"] > 0


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_unet_resumes_bit_identical_after_a_mid_epoch_kill(
    shard_root: Path, phantom_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The U-Net runs through the trainer: killed after a mid-epoch checkpoint (epoch 2, step 1 of 3), the stage
    run again ends with the weights and history of an uninterrupted run."""
    extra = ("method.stages.seg.epochs=2", "engine.ckpt_every_steps=1")
    ctx, method = stage_ctx(lh_cfg(shard_root, phantom_root, tmp_path / "ref", *extra), "seg")
    ref = train_unet(ctx, method.options, method.recipe("seg"))
    ref_dir = ctx.stage_dir
    ctx, method = stage_ctx(lh_cfg(shard_root, phantom_root, tmp_path / "killed", *extra), "seg")
    with monkeypatch.context() as m:
        kill_after_checkpoint(m, step=4)
        with pytest.raises(Killed):
            train_unet(ctx, method.options, method.recipe("seg"))
    assert not (ctx.stage_dir / "last.pt").exists()  # it did stop part-way
    out = train_unet(ctx, method.options, method.recipe("seg"))
    for name in ("best.pt", "last.pt"):
        a, b = _weights(ref_dir / name), _weights(ctx.stage_dir / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert out["history"] == ref["history"] and len(ref["history"]) == 2
