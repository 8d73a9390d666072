"""Benchmark of the evaluator's rank-0 compute: per-class AUROC + the three localization protocols.

Synthetic data at the real sizes: 25,596 test images × 14 labels with the test-split prevalence of fang2021
Table 1, and 984 boxes on 880 images with fang2021 Table 1's per-class box counts, each (image, class) pair with
a 224² heatmap made of smooth Gaussian blobs (one near the GT box most of the time, so the overlaps are not all 0).

Goal (task brief): ≤ 2 s for both on 2 CPU cores, judged on the median of ``--repeat`` runs.
Run: ``.venv/bin/python -m benchmarks.evaluator [--num-samples N] [--num-boxes B] [--size S] [--compare-size C]``
(e.g. ``--size 7 --compare-size 224`` for raw 7×7 CAMs; ``--compare-size 1024`` is ~25× slower per heatmap).
Wall time is measured without tracemalloc; the peak allocation comes from one extra traced run.
Gather cost: ``cxrdist.engine.inference.gather_to_main`` of the split's (index, logits) rows, each rank holding the
indices the eval sampler gives it (rank r: r, r+W, ...), timed in this process (world 1: no collective, only the
placing) and on rank 0 of 2 spawned gloo processes (world 2: ``all_gather_object`` + placing); medians of
``--gather-repeat`` calls, ratio world 2 / world 1 (``--gather-repeat 0`` skips it).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np
from scipy.stats import norm

from cxrdist import dist
from cxrdist.engine.inference import gather_to_main
from cxrdist.eval.classification import auroc_per_class
from cxrdist.eval.localization import evaluate_localization
from cxrdist.labels import BOX_CLASSES, LABELS

GOAL_S = 2.0
# fang2021 Table 1, "Test" column (25,596 images) and "Box" column (984 boxes), in LABELS order.
TEST_POSITIVES = (3279, 1069, 4658, 6112, 1748, 1623, 555, 2665, 1815, 925, 1093, 435, 1143, 86)
BOX_COUNTS = (180, 146, 153, 123, 85, 79, 120, 98)
TEST_IMAGES = 25_596
ORIG = 1024


def make_classification(num: int, rng: np.random.Generator, auroc: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Labels with the test-split prevalence and scores whose per-class AUROC is about ``auroc``."""
    prevalence = np.array(TEST_POSITIVES) / TEST_IMAGES
    labels = (rng.random((num, len(LABELS))) < prevalence).astype(np.uint8)
    shift = np.sqrt(2.0) * norm.ppf(auroc)  # binormal model: AUROC = Φ(shift / √2)
    scores = (rng.standard_normal((num, len(LABELS))) + shift * labels).astype(np.float32)
    return labels, scores


def _blob(size: int, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    grid = np.arange(size, dtype=np.float32) + 0.5
    return np.outer(np.exp(-0.5 * ((grid - cy) / sy) ** 2), np.exp(-0.5 * ((grid - cx) / sx) ** 2))


def make_boxes(num_boxes: int, num_images: int, rng: np.random.Generator) -> list[dict]:
    """``num_boxes`` GT records on ``num_images`` images (one each, the rest on random ones), NIH-like sizes."""
    weights = np.array(BOX_COUNTS, dtype=float) / sum(BOX_COUNTS)
    classes = rng.choice(len(BOX_CLASSES), size=num_boxes, p=weights)
    images = np.concatenate([np.arange(num_images), rng.integers(0, num_images, max(0, num_boxes - num_images))])
    records = []
    for img, c in zip(images[:num_boxes], classes):
        w, h = rng.uniform(60, 420, size=2)
        x, y = rng.uniform(0, ORIG - w), rng.uniform(0, ORIG - h)
        records.append({"key": f"{img:08d}_000.png", "class_idx": int(c), "x": x, "y": y, "w": w, "h": h})
    return records


def make_heatmaps(records: list[dict], size: int, rng: np.random.Generator) -> dict:
    """One ``size``² float32 heatmap per (image, class) pair: 2–4 random blobs, plus one at a GT box 70% of the time."""
    scale = size / ORIG
    heatmaps: dict = {}
    for rec in records:
        pair = (rec["key"], rec["class_idx"])
        if pair not in heatmaps:
            hm = np.zeros((size, size), np.float32)
            for _ in range(rng.integers(2, 5)):
                cx, cy = rng.uniform(0, size, 2)
                hm += rng.uniform(0.2, 0.8) * _blob(size, cx, cy, *rng.uniform(0.03, 0.12, 2) * size)
            heatmaps[pair] = hm
        if rng.random() < 0.7:
            cx, cy = (rec["x"] + rec["w"] / 2) * scale, (rec["y"] + rec["h"] / 2) * scale
            heatmaps[pair] += _blob(size, cx, cy, rec["w"] * scale / 2.5, rec["h"] * scale / 2.5)
    return heatmaps


def run_once(labels, scores, heatmaps, records, size: int) -> tuple[dict, dict]:
    """The timed work: AUROC on the whole split, then all three localization protocols."""
    auroc = auroc_per_class(labels, scores)
    loc = evaluate_localization(heatmaps, records, orig_size=ORIG, compare_size=size)
    return auroc, loc


def time_gather(rank: int, world: int, port: int, num: int, repeat: int, out: str | None = None) -> list[float]:
    """Seconds of each of ``repeat`` gather_to_main calls on this rank (rank 0 writes them to ``out``)."""
    if world > 1:
        os.environ["OMP_NUM_THREADS"] = "1"
        dist.init(dist.DistEnv(rank=rank, world_size=world, local_rank=rank, local_world_size=world, master_port=port))
    rng = np.random.default_rng(rank)
    index = np.arange(rank, num, world, dtype=np.int64)  # the eval sampler's share of this rank
    local = {"index": index, "logits": rng.standard_normal((len(index), len(LABELS))).astype(np.float32)}
    times = []
    for _ in range(repeat):
        dist.barrier()
        t0 = time.perf_counter()
        placed = gather_to_main(local, num)
        times.append(time.perf_counter() - t0)
    if rank == 0:
        assert placed is not None and placed["logits"].shape == (num, len(LABELS))
        if out:
            Path(out).write_text(" ".join(map(str, times)))
    dist.shutdown()
    return times


def gather_cost(num: int, repeat: int) -> tuple[float, float]:
    """Median gather_to_main seconds at world 1 (this process) and world 2 (rank 0 of 2 spawned gloo ranks)."""
    import tempfile

    import torch.multiprocessing as mp

    from cxrdist.dist import free_port

    one = statistics.median(time_gather(0, 1, 0, num, repeat))
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times.txt")
        mp.start_processes(time_gather, args=(2, free_port(), num, repeat, out), nprocs=2, start_method="spawn")
        two = statistics.median(float(t) for t in Path(out).read_text().split())
    return one, two


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, build the synthetic split, time and memory-profile the evaluator, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=TEST_IMAGES, help="classification split size")
    parser.add_argument("--num-boxes", type=int, default=984, help="GT boxes (on min(880, num-boxes) images)")
    parser.add_argument("--size", type=int, default=224, help="heatmap size (square)")
    parser.add_argument("--compare-size", type=int, default=None, help="comparison size (default: --size)")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gather-repeat", type=int, default=5, help="timed gather_to_main calls (0: skip)")
    args = parser.parse_args(argv)
    compare = args.compare_size or args.size

    rng = np.random.default_rng(args.seed)
    labels, scores = make_classification(args.num_samples, rng)
    records = make_boxes(args.num_boxes, min(880, args.num_boxes), rng)
    heatmaps = make_heatmaps(records, args.size, rng)
    print(f"cpus available: {len(os.sched_getaffinity(0))}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(
        f"data: {args.num_samples} x {len(LABELS)} scores; {len(records)} boxes, {len(heatmaps)} heatmaps of "
        f"{args.size}^2 on {len({r['key'] for r in records})} images, compared at {compare}^2"
    )

    rss_before = _maxrss_mib()
    times, parts = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        auroc = auroc_per_class(labels, scores)
        t1 = time.perf_counter()
        loc = evaluate_localization(heatmaps, records, orig_size=ORIG, compare_size=compare)
        t2 = time.perf_counter()
        times.append(t2 - t0)
        parts.append((t1 - t0, t2 - t1))
    rss_delta = _maxrss_mib() - rss_before

    tracemalloc.start()
    run_once(labels, scores, heatmaps, records, compare)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    best = min(range(len(times)), key=times.__getitem__)
    print(
        f"wall time, auroc + localization: first {times[0]:.3f} s, median {statistics.median(times):.3f} s, "
        f"best {times[best]:.3f} s (auroc {parts[best][0]:.3f} s, localization {parts[best][1]:.3f} s)"
    )
    print(
        f"peak traced allocation during one run (tracemalloc): {peak / 2**20:.1f} MiB; "
        f"ru_maxrss growth over the timed runs: {rss_delta:.1f} MiB"
    )
    verdict = "MET" if statistics.median(times) <= GOAL_S else "MISSED"
    print(f"goal: <= {GOAL_S:.1f} s (median) -> {verdict}")
    print(
        f"sanity: mean AUROC {auroc['mean']:.4f} over {auroc['num_defined']} classes; fang best-box IoU "
        f"(>60) mean over boxes {loc['fang']['60']['mean_over_boxes']:.4f}, over classes "
        f"{loc['fang']['60']['mean_over_classes']:.4f}; kim acc@0.3 (>60) mean over classes "
        f"{loc['kim']['60']['0.3']['mean_over_classes']:.4f}"
    )
    if args.gather_repeat > 0:
        one, two = gather_cost(args.num_samples, args.gather_repeat)
        print(
            f"gather_to_main of {args.num_samples} x {len(LABELS)} float32 logits (median of {args.gather_repeat}): "
            f"world 1 {one * 1e3:.1f} ms, world 2 (gloo, rank 0) {two * 1e3:.1f} ms, ratio 2/1 {two / one:.2f}"
        )


if __name__ == "__main__":
    main()
