"""The bare limit of one core for the loaders' work (benchmarks/loader.py (d) and (e)), no framework.

(d) ``bare_loop``: for each sample, read its JPEG bytes at the ``.idx`` offset from an open tar, decode with PIL
(libjpeg-turbo), crop the sample's window and resample it to the output size with PIL (antialiased bilinear, the
filter the loaders use), flip, and normalise to 3 ImageNet channels in numpy (float32 (3, out, out)); its output is
checked against the torch loader's on 32 samples first (within the loaders' own 3 grey levels).
The windows and flips are the loaders' own (``sample_geometries`` with the same seed), drawn before the
timing: the limit, not the work of drawing them, is what (d) measures.
(k) ``kept_batches_loop``: (d), each image normalised into a fresh batch array kept until the next batch is full,
as a loader must hand the trainer batches it keeps ((d) normalises into a buffer that is dropped while in cache).
(e) ``decode_only``: the same reads and the PIL decode alone.

Both run on one thread in the calling process; their img/s is the per-core limit the loaders are held against.
"""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from cxrdist.data.loaders.base import decode_gray
from cxrdist.data.reader import ShardReader
from cxrdist.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SampleGeometry,
    apply_geometry_torch,
    normalize_batch,
    sample_geometries,
    sample_uniforms,
    uniform_columns,
)

MAX_GREY_DIFF = 3.0  # the loaders' own DALI-vs-torch tolerance (tests/data/test_loaders.py)

SCALE = (1.0 / (255.0 * np.asarray(IMAGENET_STD, dtype=np.float32)))[:, None, None]
BIAS = (-np.asarray(IMAGENET_MEAN, dtype=np.float32) / np.asarray(IMAGENET_STD, dtype=np.float32))[:, None, None]


def plan(reader: ShardReader, ops: list[dict], seed: int = 0, epoch: int = 0) -> list[tuple[int, int, int]]:
    """(shard, offset, size) of each sample's JPEG in a seeded random order, as the training sampler reads them."""
    order = np.random.default_rng([seed, epoch]).permutation(len(reader))
    return [(reader.refs[i].shard, *reader.refs[i].jpg) for i in order.tolist()]


def geometries(ops: list[dict], src: tuple[int, int], n: int, seed: int = 0) -> list[SampleGeometry]:
    """The loaders' training windows and flips of positions 0..n-1 of epoch 0."""
    return sample_geometries(ops, np.full((n, 2), src), sample_uniforms(seed, 0, np.arange(n), uniform_columns(ops)))


class _Tars:
    """Open tar files, one read per sample (what any loader must do)."""

    def __init__(self, reader: ShardReader):
        self.files = [open(t, "rb") for t in reader.tars]  # noqa: SIM115 (closed in close())

    def read(self, shard: int, offset: int, size: int) -> bytes:
        f = self.files[shard]
        f.seek(offset)
        return f.read(size)

    def close(self) -> None:
        for f in self.files:
            f.close()


def transform_one(data: bytes, g: SampleGeometry, out: np.ndarray | None = None) -> np.ndarray:
    """Decode + crop-resize + flip + normalise of one JPEG: float32 (3, out, out), into ``out`` when given."""
    with Image.open(io.BytesIO(data)) as im:
        # crop, then resample: the window's edge pixels are not blended with the pixels outside it (the loaders')
        im = im.crop((g.x0, g.y0, g.x0 + g.w, g.y0 + g.h)).resize((g.out, g.out), Image.Resampling.BILINEAR)
    if g.flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if out is None:
        return np.asarray(im, dtype=np.float32)[None] * SCALE + BIAS
    np.multiply(np.asarray(im, dtype=np.float32)[None], SCALE, out=out)
    out += BIAS
    return out


def grey_diff(data: bytes, g: SampleGeometry) -> float:
    """Max difference, in grey levels, between :func:`transform_one` and the torch loader's path for one sample."""
    ref = normalize_batch(apply_geometry_torch(decode_gray(data, "bench"), g)[None], "imagenet", 3)[0].numpy()
    return float(np.abs(transform_one(data, g) - ref).max() * 255 * max(IMAGENET_STD))


def bare_loop(reader: ShardReader, ops: list[dict], src: tuple[int, int], min_seconds: float = 2.0) -> dict:
    """(d): passes over the split until ``min_seconds`` have gone; returns images, seconds, CPU seconds and the
    largest difference from the torch loader's output on the first 32 samples (grey levels), checked first."""
    refs = plan(reader, ops)
    geoms = geometries(ops, src, len(refs))
    tars = _Tars(reader)
    try:
        diff = max(grey_diff(tars.read(*refs[k]), geoms[k]) for k in range(min(32, len(refs))))
        if diff > MAX_GREY_DIFF:
            raise RuntimeError(f"bare loop differs from the torch loader by {diff:.1f} grey levels: not the same work")
        return {"grey_diff": diff} | _timed(
            lambda k: transform_one(tars.read(*refs[k]), geoms[k]), len(refs), min_seconds
        )
    finally:
        tars.close()


def kept_batches_loop(
    reader: ShardReader, ops: list[dict], src: tuple[int, int], batch: int, min_seconds: float = 2.0
) -> dict:
    """(k): (d)'s work, each image normalised into a fresh (batch, 3, out, out) array that is kept until the next
    batch is full (what a loader hands the trainer), instead of a buffer dropped while still in cache."""
    refs = plan(reader, ops)
    geoms = geometries(ops, src, len(refs))
    tars, state = _Tars(reader), {"out": None, "j": batch}

    def one(k: int) -> None:
        g = geoms[k]
        if state["j"] == batch:  # the last batch is handed over: a new one is filled
            state["out"], state["j"] = np.empty((batch, 3, g.out, g.out), dtype=np.float32), 0
        transform_one(tars.read(*refs[k]), g, state["out"][state["j"]])
        state["j"] += 1

    try:
        return _timed(one, len(refs), min_seconds)
    finally:
        tars.close()


def decode_only(reader: ShardReader, min_seconds: float = 2.0) -> dict:
    """(e): reads + PIL decode alone, same order; returns images, seconds, CPU seconds."""
    refs = plan(reader, [])
    tars = _Tars(reader)

    def one(k: int) -> np.ndarray:
        with Image.open(io.BytesIO(tars.read(*refs[k]))) as im:
            return np.asarray(im)

    try:
        one(0)
        return _timed(one, len(refs), min_seconds)
    finally:
        tars.close()


def _timed(fn, n: int, min_seconds: float) -> dict:
    images, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        for k in range(n):
            fn(k)
        images += n
        if time.perf_counter() - t0 >= min_seconds:
            return {"images": images, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
