"""Benchmark [F1]: images/s of the shard writer (one worker) vs a bare decode + resize + encode loop.

A phantom NIH root (``make_phantom``, 1024² PNGs by default) is turned into shards by the real
``cxrdist.data.writer.write_shards`` (workers=1, a fresh output dir each time; the whole call is timed: config
header, split planning, tar + DALI index + record writing with fsync and checksums). The baseline does only the
per-image work on the very same records (every split, bbox included, as the writer does) with the writer's own
PIL calls, ``cxrdist.data.writer.load_gray`` + ``encode_jpeg``; a third column does it with raw PIL
(``Image.open → convert("L") → resize(BILINEAR) → save(JPEG)``, no numpy round trip) for reference.
The three are interleaved ``--repeat`` times and the medians compared.

Goal: writer / bare (load_gray + encode_jpeg) ≥ 0.9.
Run: ``.venv/bin/python -m benchmarks.shard_write [--num-images 400] [--size 1024] [--out-size 512]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from cxrdist.data.writer import WriterConfig, encode_jpeg, load_gray, plan_tasks, write_shards
from cxrdist.phantom.generate import make_phantom

GOAL = 0.9


def get_phantom(work: Path, num_images: int, size: int, workers: int) -> Path:
    """A phantom NIH root of ``num_images`` at ``size``² under ``work``, reused when an identical one exists."""
    root = work / f"phantom-{num_images}-{size}"
    summary = root / "phantom.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        if s.get("images") == num_images and s.get("size") == size and s.get("seed") == 0:
            return root
    t0 = time.perf_counter()
    make_phantom(root, num_images=num_images, size=size, seed=0, seg_images=0, workers=workers)
    print(f"phantom: {num_images} images at {size}² drawn in {time.perf_counter() - t0:.0f} s -> {root}")
    return root


def run_writer(cfg: WriterConfig) -> tuple[float, int]:
    """Write every shard of ``cfg`` into a fresh dir; return (seconds, images written)."""
    shutil.rmtree(cfg.out, ignore_errors=True)
    t0 = time.perf_counter()
    results = write_shards(cfg, progress=False)
    dt = time.perf_counter() - t0
    return dt, sum(r["samples"] for r in results)


def run_bare(paths: list[Path], out_size: int, quality: int) -> tuple[float, int]:
    """The writer's per-image work only: load_gray (PNG decode) + encode_jpeg (resize + JPEG encode)."""
    t0 = time.perf_counter()
    for p in paths:
        encode_jpeg(load_gray(p), out_size, quality)
    return time.perf_counter() - t0, len(paths)


def run_raw_pil(paths: list[Path], out_size: int, quality: int) -> tuple[float, int]:
    """The same with raw PIL calls (no numpy round trip)."""
    t0 = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("L")
            if im.size != (out_size, out_size):
                im = im.resize((out_size, out_size), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=quality)
    return time.perf_counter() - t0, len(paths)


def main(argv: list[str] | None = None) -> None:
    """Make (or reuse) the phantom, time writer and baselines interleaved, print the table and the goal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=400, help="phantom images")
    parser.add_argument("--size", type=int, default=1024, help="phantom PNG size (the real release: 1024)")
    parser.add_argument("--out-size", type=int, default=512, help="stored JPEG size (writer's --size)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (medians reported)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/cxrdist-bench"), help="phantom cache + shards")
    parser.add_argument("--phantom-workers", type=int, default=2, help="processes drawing the phantom")
    args = parser.parse_args(argv)

    root = get_phantom(args.work_dir, args.num_images, args.size, args.phantom_workers)
    out = args.work_dir / f"shards-write-{os.getpid()}"
    cfg = WriterConfig(
        nih_root=str(root),
        out=str(out),
        size=args.out_size,
        quality=args.quality,
        samples_per_shard=args.samples_per_shard,
        workers=1,
    )
    paths = [root / "images" / r.image for t in plan_tasks(cfg) for r in t.records]
    print(f"cpus available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f}")
    print(
        f"work: {len(paths)} images ({args.num_images} + bbox split copies), {args.size}² PNG -> "
        f"{args.out_size}² JPEG q{args.quality}, {args.samples_per_shard} samples/shard, writer workers=1"
    )

    runs: dict[str, Callable[[], tuple[float, int]]] = {
        "writer (write_shards)": lambda: run_writer(cfg),
        "bare (load_gray+encode_jpeg)": lambda: run_bare(paths, args.out_size, args.quality),
        "raw PIL (no numpy)": lambda: run_raw_pil(paths, args.out_size, args.quality),
    }
    rates: dict[str, list[float]] = {k: [] for k in runs}
    try:
        for rep in range(args.repeat):
            for name, fn in runs.items():
                dt, n = fn()
                rates[name].append(n / dt)
            print(f"  repeat {rep + 1}: " + ", ".join(f"{k.split()[0]} {v[-1]:.1f}" for k, v in rates.items()))
    finally:
        shutil.rmtree(out, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med["bare (load_gray+encode_jpeg)"]
    print(f"\n{'':30s} {'images/s (median)':>18s} {'min':>8s} {'max':>8s} {'vs bare':>8s}")
    for name, v in rates.items():
        print(f"{name:30s} {med[name]:18.1f} {min(v):8.1f} {max(v):8.1f} {med[name] / base:8.3f}")
    ratio = med["writer (write_shards)"] / base
    verdict = "MET" if ratio >= GOAL else "MISSED"
    print(f"\ngoal: writer / bare (load_gray+encode_jpeg) >= {GOAL} per worker -> {ratio:.3f} {verdict}")


if __name__ == "__main__":
    main()
