"""Shared fixtures: a small phantom ChestX-ray14 and its shards, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep CPU tests predictable on 2 cores; set before torch spins up its pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
PHANTOM_IMAGES = 310  # test split = 71 images: divisible by neither 2 nor 3 (evaluator tests)
PHANTOM_SIZE = 64


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 310-image, 64 px phantom NIH root (read-only for tests: copy it before corrupting)."""
    from cxrdist.phantom.generate import make_phantom

    out = tmp_path_factory.mktemp("phantom")
    make_phantom(out, num_images=PHANTOM_IMAGES, size=PHANTOM_SIZE, seed=0, seg_images=8)
    return out


@pytest.fixture(scope="session")
def shard_root(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of the session phantom (stored at 64 px, 40 samples per shard)."""
    from cxrdist.data.writer import WriterConfig, write_dataset

    out = tmp_path_factory.mktemp("shards")
    cfg = WriterConfig(nih_root=str(phantom_root), out=str(out), size=64, samples_per_shard=40, seed=0)
    write_dataset(cfg, progress=False)
    return out
