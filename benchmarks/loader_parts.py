"""Benchmark [G8]: where a loader's CPU time per image goes, part by part, against the bare loop (d)'s parts.

``benchmarks/loader.py`` says how far each loader is from (d), the bare one-core limit; this says why. Each part
is timed alone over the same training samples (224² from the shards, ``benchmarks.loader.TRAIN_OPS``), on one
thread in this process, CPU time (``time.process_time``: the machine may be shared), interleaved ``--repeat``
times, medians:

- (d)'s parts: the read at the ``.idx`` offset, PIL's decode, PIL's 8-bit crop + resize + flip, numpy's
  normalisation to 3 channels (one image at a time, as ``benchmarks/bare.py``).
- the torch loader's: the batch's windows and flips, the decode (``decode_gray``), the float32 resample
  (``apply_geometry_torch`` into a batch slot), the opt-in 8-bit resample (``apply_geometry_pil``, decode
  included), and the batch's normalisation after the hand-over (``normalize_batch``, one batch at a time).
- DALI's operators on the CPU (one thread): the feed alone, + the region decode (``decoders.image_slice``),
  + ``resize`` (float / uint8), + ``crop_mirror_normalize``; each operator's cost is the difference of two
  pipelines, so the feed and DALI's per-batch overhead are counted once.

The last lines put the resamplers side by side: what the loaders' resample costs over (d)'s is not Python, and DALI's
CPU ``resize`` is DALI's own (the GPU loader resizes on the device).
Run: ``.venv/bin/python -m benchmarks.loader_parts [--shards DIR | --num-images 2000 --size 256 --shard-size 256]``
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.bare import BIAS, SCALE, _Tars
from benchmarks.loader import TRAIN_OPS, add_shard_arguments, shards_from
from cxrdist.data.loaders.base import LoaderSpec, decode_gray
from cxrdist.data.loaders.factory import build_loader
from cxrdist.data.transforms import apply_geometry_pil, apply_geometry_torch, normalize_batch


def _dali_pipelines(batches: list[tuple], batch: int) -> dict[str, Callable[[], object]]:
    """One CPU pipeline (one thread) per prefix of the loader's graph, each fed the same prepared batches."""
    from nvidia.dali import fn, pipeline_def, types  # optional heavy dependency: DALI only for this section

    def build(stage: str):
        state = {"i": 0}

        def source():
            state["i"] = (state["i"] + 1) % len(batches)
            return batches[state["i"]]

        @pipeline_def(batch_size=batch, num_threads=1, device_id=None, prefetch_queue_depth=2, exec_dynamic=True)
        def pipe():
            jpegs, anchor, shape, flip = fn.external_source(source=source, num_outputs=4, batch=True, no_copy=False)
            if stage == "feed":
                return fn.cast(flip, dtype=types.FLOAT)
            images = fn.decoders.image_slice(jpegs, start=anchor, shape=shape, axis_names="WH", device="cpu",
                                             output_type=types.GRAY)  # fmt: skip
            if stage == "decode":
                return images
            dtype = types.UINT8 if stage.endswith("uint8") else types.FLOAT
            images = fn.resize(images, size=[224, 224], interp_type=types.INTERP_LINEAR, antialias=True, dtype=dtype)
            if stage.startswith("resize"):
                return images
            return fn.crop_mirror_normalize(images, mirror=flip, output_layout="CHW", dtype=dtype)

        with warnings.catch_warnings():  # "outputs ... are not used": the shorter pipelines leave inputs out
            warnings.simplefilter("ignore")
            p = pipe()
            p.build()
        return p.run

    stages = ("feed", "decode", "resize float", "resize uint8", "cmn float")
    return {s: build(s) for s in stages}


def parts(shards: Path, batch: int, repeat: int, images: int) -> dict[str, float]:
    """CPU µs per image of every part (medians of ``repeat`` interleaved rounds)."""
    torch.set_num_threads(1)
    spec = LoaderSpec(root=str(shards), split="train", train=True, batch_per_rank=batch, ops=TRAIN_OPS,
                      normalize="imagenet", channels=3, workers=0)  # fmt: skip
    loader = build_loader("torch", spec, device=torch.device("cpu"))
    epoch, batches = loader._plan()
    batches = batches[: max(images // batch, 1)]
    geoms = [g for idx, pos in batches for g in loader.geometries(idx, pos, epoch)]
    tars = _Tars(loader.reader)
    refs = [(loader.reader.refs[i].shard, *loader.reader.refs[i].jpg) for idx, _ in batches for i in idx.tolist()]
    jpegs = [tars.read(*r) for r in refs]
    n = len(jpegs)
    pils, grays = [], [decode_gray(j, "bench") for j in jpegs]
    for j in jpegs:
        with Image.open(io.BytesIO(j)) as im:
            im.load()
            pils.append(im.copy())
    small = [np.asarray(im.resize((224, 224))) for im in pils]
    slot = np.empty((1, 224, 224), dtype=np.float32)
    u8 = np.empty((224, 224), dtype=np.uint8)
    pool = torch.rand(batch, 1, 224, 224) * 255

    def pil_geometry(im: Image.Image, g) -> np.ndarray:
        im = im.crop((g.x0, g.y0, g.x0 + g.w, g.y0 + g.h)).resize((g.out, g.out), Image.Resampling.BILINEAR)
        return np.asarray(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if g.flip else im)

    def dec(j: bytes) -> None:
        with Image.open(io.BytesIO(j)) as im:
            im.load()

    def each(fn: Callable, *columns) -> Callable[[], None]:
        def run() -> None:  # results dropped one by one, as a loop that hands them on (no growing heap)
            for args in zip(*columns):
                fn(*args)

        return run

    timed: dict[str, Callable[[], object]] = {
        "(d) read": each(tars.read, *zip(*refs)),
        "(d) PIL decode": each(dec, jpegs),
        "(d) PIL 8-bit crop + resize + flip": each(pil_geometry, pils, geoms),
        "(d) numpy normalise (per image)": each(lambda a: np.asarray(a, dtype=np.float32)[None] * SCALE + BIAS, small),
        "loader: windows + flips (per batch)": each(lambda i, p: loader.geometries(i, p, epoch), *zip(*batches)),
        "loader: decode (decode_gray)": each(decode_gray, jpegs, ["bench"] * n),
        "torch loader: float resample + flip": each(lambda x, g: apply_geometry_torch(x, g, slot), grays, geoms),
        "torch loader: uint8 decode + resample + flip": each(lambda j, g: apply_geometry_pil(j, g, u8), jpegs, geoms),
        "loader: normalise (per batch)": each(lambda _: normalize_batch(pool, "imagenet", 3), batches),
    }
    dali_batches = [(
        [np.frombuffer(j, dtype=np.uint8) for j in jpegs[b * batch : (b + 1) * batch]],
        np.array([(g.x0, g.y0) for g in geoms[b * batch : (b + 1) * batch]], dtype=np.int32),
        np.array([(g.w, g.h) for g in geoms[b * batch : (b + 1) * batch]], dtype=np.int32),
        np.array([g.flip for g in geoms[b * batch : (b + 1) * batch]], dtype=np.int32),
    ) for b in range(len(batches))]  # fmt: skip
    for stage, run in _dali_pipelines(dali_batches, batch).items():
        timed[f"DALI: {stage}"] = each(lambda _, run=run: run(), batches)
    out: dict[str, list[float]] = {k: [] for k in timed}
    for fn in timed.values():
        fn()  # warm
    for _ in range(repeat):
        for k, fn in timed.items():
            c0 = time.process_time()
            fn()
            out[k].append(1e6 * (time.process_time() - c0) / n)
    med = {k: statistics.median(v) for k, v in out.items()}
    for op, base in (("decode", "feed"), ("resize float", "decode"), ("resize uint8", "decode")):
        med[f"DALI: {op} alone"] = med[f"DALI: {op}"] - med[f"DALI: {base}"]
    med["DALI: crop_mirror_normalize alone"] = med["DALI: cmn float"] - med["DALI: resize float"]
    med["images"] = n
    return med


def main(argv: list[str] | None = None) -> None:
    """Prepare the shards (or take ``--shards``), time the parts, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shard_arguments(parser, num_images=2000, size=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=640, help="training images timed per part and round")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds (medians)")
    args = parser.parse_args(argv)
    shards = shards_from(args)
    print(f"cpus available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f}")
    med = parts(shards, args.batch, args.repeat, args.images)
    print(f"{shards}: {med.pop('images'):.0f} training images, batch {args.batch}, one thread, CPU µs per image, "
          f"medians of {args.repeat} interleaved rounds\n")  # fmt: skip
    for k, v in med.items():
        print(f"  {k:48s} {v:8.1f}")
    d = sum(med[k] for k in med if k.startswith("(d)"))
    pil = med["(d) PIL 8-bit crop + resize + flip"]
    print(f"\n(d)'s parts add up to {d:.0f} µs per image ({1e6 / d:.0f} img per CPU-s)")
    print(f"torch float resample / PIL 8-bit: {med['torch loader: float resample + flip'] / pil:.2f}x; "
          f"DALI resize float / PIL: {med['DALI: resize float alone'] / pil:.2f}x, "
          f"uint8 / PIL: {med['DALI: resize uint8 alone'] / pil:.2f}x (DALI's own CPU operator)")  # fmt: skip


if __name__ == "__main__":
    main()
