"""Run start says when a recipe needs source pixels the shards do not have (amdensenet's nearest resize)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cxrdist.config import compose
from cxrdist.data.shard_fit import first_sample_meta, source_pixel_warnings
from cxrdist.data.writer import WriterConfig, write_dataset
from cxrdist.run.prepare import warn_source_pixels

NEAREST = {"train": [{"op": "resize_nearest", "size": 32}], "eval": [{"op": "resize_nearest", "size": 32}]}
BILINEAR = {"train": [{"op": "resize", "size": 48}, {"op": "center_crop", "size": 40}], "eval": []}


@pytest.fixture(scope="module")
def shards_32(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 64-px phantom stored at 32 px (what 512-px shards are to the 1024-px NIH images)."""
    out = tmp_path_factory.mktemp("shards32")
    write_dataset(
        WriterConfig(nih_root=str(phantom_root), out=str(out), size=32, samples_per_shard=400), progress=False
    )
    return out


def test_nearest_resize_from_resized_shards_warns_with_the_command(shards_32: Path):
    assert first_sample_meta(shards_32)["source_size"] == [64, 64]
    (msg,) = source_pixel_warnings(shards_32, {"train": NEAREST})
    assert "stage train" in msg and "stores them at 32 px (antialiased bilinear from 64 px)" in msg
    assert "nearest resize does nothing" in msg and "--size 0" in msg and "python launch/write_shards.py" in msg
    (up,) = source_pixel_warnings(shards_32, {"fine": BILINEAR})
    assert "resizes to 48 px" in up and "upsampled" in up and "--size 48" in up


def test_shards_at_the_source_size_pass(shard_root: Path):
    """The session shards are stored at the phantom's own 64 px: nothing is missing."""
    assert source_pixel_warnings(shard_root, {"train": NEAREST, "fine": BILINEAR}) == []


def test_run_start_warns_for_amdensenet(shards_32: Path, caplog):
    cfg = compose(["method=amdensenet", f"data.root={shards_32}", "run_dir=/unused"])
    with caplog.at_level(logging.WARNING, logger="cxrdist.run.prepare"):
        (msg,) = warn_source_pixels(cfg)
    assert "nearest neighbour to 512 px" in msg and "resamples those resized pixels" in msg
    assert [r.getMessage() for r in caplog.records if r.name == "cxrdist.run.prepare"] == [msg]
    chexnet = compose(["method=chexnet", f"data.root={shards_32}", "run_dir=/unused"])
    assert all("resizes to 256 px" in w for w in warn_source_pixels(chexnet))  # 32-px shards upsampled to 256
