"""zhao2021 AM-DenseNet method: CBAM placement from the config, focal loss with the config's α and γ, end to end,
and the random 70/30 image split its paper measured on (shard writer ``--split-scheme random-image``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cxrdist.engine.train_hooks as hooks_module  # the classifier hooks build the recipe's loss
from cxrdist.config import compose
from cxrdist.data.nih import read_data_entry
from cxrdist.data.reader import ShardReader
from cxrdist.data.shard_cli import config_from_args, writer_parser
from cxrdist.data.writer import write_dataset
from cxrdist.engine.losses import focal
from cxrdist.engine.pipeline import read_done
from cxrdist.methods import get_method
from cxrdist.run.local import run_local

OPS = "[{op: resize_nearest, size: 32}]"


def am_cfg(shards: Path | str, run_dir: Path | str, *extra: str):
    """amdensenet at test size: 32 px nearest, global batch 4, one epoch of two steps, no ImageNet weights."""
    return compose(
        [
            "method=amdensenet",
            f"data.root={shards}",
            f"run_dir={run_dir}",
            "logger=none",
            "loader.workers=0",
            "method.model.pretrained=false",
            "method.stages.train.epochs=1",
            "method.stages.train.max_steps_per_epoch=2",
            "method.stages.train.global_batch=4",
            f"method.stages.train.transforms.train={OPS}",
            f"method.stages.train.transforms.eval={OPS}",
            "eval.heatmap_examples=1",
            *extra,
        ]
    )


@pytest.mark.parametrize(
    "placement,order",
    [
        ("before_transition", ["denseblock1", "cbam1", "transition1", "denseblock2", "cbam2", "transition2"]),
        ("after_transition", ["denseblock1", "transition1", "cbam1", "denseblock2", "transition2", "cbam2"]),
    ],
)
def test_cbam_placement_reaches_the_model(placement: str, order: list[str]):
    cfg = am_cfg("/x", "/x", f"method.model.cbam_placement={placement}")
    names = [n for n, _ in get_method("amdensenet")(cfg).build_model("train").features.named_children()]
    kept = [n for n in names if n.startswith(("denseblock", "transition", "cbam"))]
    assert kept[: len(order)] == order and kept[-1] == "denseblock4" and names.count("cbam4") == 0


def test_paper_recipe_defaults():
    cfg = compose(["method=amdensenet", "data.root=/x"])
    r = cfg.method.stages.train
    assert r.loss == "focal" and dict(r.loss_args) == {"alpha": 0.25, "gamma": 2.0}
    assert r.schedule.name == "plateau" and r.schedule.metric == "train_loss" and r.global_batch == 8
    assert r.transforms.normalize == "unit" and r.transforms.train == [{"op": "resize_nearest", "size": 512}]
    assert cfg.method.published.split == "random-image"


def test_focal_loss_from_config_trains_end_to_end(shard_root: Path, tmp_path: Path, monkeypatch):
    calls = []
    real = hooks_module.build_loss

    def spy(name, args=None):
        calls.append((name, dict(args or {})))
        return real(name, args)

    monkeypatch.setattr(hooks_module, "build_loss", spy)  # nproc=1 runs in this process
    cfg = am_cfg(shard_root, tmp_path / "run", "method.stages.train.loss_args.alpha=0.4")
    run_dir = run_local(cfg, nproc=1)
    assert calls == [("focal", {"alpha": 0.4, "gamma": 2.0})]
    x, y = torch.randn(4, 14), (torch.rand(4, 14) > 0.7).float()
    assert torch.equal(real(*calls[0])(x, y), focal(x, y, 0.4, 2.0))
    assert read_done(run_dir / "stages" / "00_train")["outputs"]["steps"] == 2
    done = read_done(run_dir / "stages" / "01_eval")
    assert done is not None and done["outputs"]["weights"].endswith("00_train/last.pt")


def test_random_image_split_shards(phantom_root: Path, tmp_path: Path):
    out = tmp_path / "shards"
    args = writer_parser().parse_args(
        [
            "--nih-root",
            str(phantom_root),
            "--out",
            str(out),
            "--size",
            "32",
            "--samples-per-shard",
            "100",
            "--split-scheme",
            "random-image",
            "--test-fraction",
            "0.3",
            "--seed",
            "3",
        ]  # fmt: skip
    )
    write_dataset(config_from_args(args), progress=False)
    header = json.loads((out / "_dataset.json").read_text())
    assert header["config"]["split_scheme"] == "random-image" and header["config"]["test_fraction"] == 0.3
    assert header["config"]["seed"] == 3
    info = {s: json.loads((out / s / "_info.json").read_text()) for s in ("train", "val", "test", "bbox")}
    assert all(i["writer"]["split_scheme"] == "random-image" for i in info.values())
    keys = {s: ShardReader(out, s).keys for s in info}
    num_images = len(read_data_entry(next(phantom_root.glob("Data_Entry*.csv"))))
    # zhao2021: 30 % of all images, drawn per image, form the test set; the other 70 % are train (+ our val cut)
    assert len(keys["test"]) == round(0.3 * num_images)
    assert len(keys["train"]) + len(keys["val"]) + len(keys["test"]) == num_images
    assert set(keys["bbox"]) <= set(keys["test"]) and not set(keys["train"]) & set(keys["test"])
    official_test = set((phantom_root / "test_list.txt").read_text().split())
    assert {k.split(".")[0] for k in keys["test"]} != {n.split(".")[0] for n in official_test}
