"""Benchmark [F2]: training-batch throughput at 224² of the DALI and torch loaders vs a CheXNet-style baseline.

(a) ``DaliLoader`` (CPU decode here: device_id None) and (b) ``TorchLoader`` read shards written once from a
phantom at ``--shard-size`` (256² JPEGs) with resize 256 → random_resized_crop 224 → hflip, ImageNet
normalisation, 3 channels. (c) The baseline is the usual CheXNet reproduction: a torch DataLoader whose workers
read the phantom's 1024² PNGs with PIL (``convert("RGB")``), then torchvision's classic Resize(256) →
RandomCrop(224) → RandomHorizontalFlip → ToTensor → Normalize. All three read the same train-split images with
the same batch and the same number of workers / DALI threads.

Each loader runs in its own subprocess (clean peak RSS: ``ru_maxrss`` of the process itself and of its largest
reaped child, i.e. a DataLoader worker; forked workers share the parent's pages, so the numbers overlap).
One warm-up batch is excluded from the timing (``--warm-epoch``: a whole epoch first), then ``--epochs`` epochs
are timed (one-off start-up in them: the torch loader's persistent workers are forked and DALI's one pipeline is
built on the first pass, then reused). Loaders are interleaved ``--repeat`` times; medians. ``--threads N`` sets
the loader process's intra-op threads (the main process's normalisation; workers always run one thread);
``--resample uint8`` runs (a) and (b) with the opt-in 8-bit resampling (``loader.resample=uint8``: (d)'s own
PIL resize in the torch loader, uint8 batches normalised after the hand-over).

(d) is the bare limit of one core for the same work (``benchmarks/bare.py``: read at the ``.idx`` offset, PIL
decode, crop + resize in PIL, flip, numpy normalise to 3 channels, one thread, no framework), (k) the same loop
normalising each image into a fresh batch array it keeps until the next batch is full (what a loader hands a trainer;
(d) normalises into a buffer dropped while still in cache; shown for reference, the goal is against (d)) and (e) the
reads + decode alone, all measured in the same run. Per core: a loader's img/s divided by its workers / DALI
threads (the cores it was given), and img per CPU-second (this process + its children, reaped or still
running: persistent workers; steadier than wall time on a shared machine).

Goals: (a) ≥ 10× (c); (a) and (b) ≥ 0.9 × (d) per core.
Run: ``.venv/bin/python -m benchmarks.loader [--num-images 400] [--size 1024] [--shard-size 256] [--workers 2]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL = 10.0
GOAL_BARE = 0.9
KINDS = {
    "c": "baseline: PNG + PIL + DataLoader",
    "a": "DALI loader (CPU), shards",
    "b": "torch loader, shards",
    "d": "bare loop, 1 thread (limit)",
    "k": "bare loop keeping its batches",
    "e": "reads + decode alone, 1 thread",
}
TRAIN_OPS = [{"op": "resize", "size": 256}, {"op": "random_resized_crop", "size": 224}, {"op": "hflip"}]


def get_phantom(work: Path, num_images: int, size: int, workers: int) -> Path:
    """A phantom NIH root of ``num_images`` at ``size``² under ``work``, reused when an identical one exists."""
    from cxrdist.phantom.generate import make_phantom

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


def get_shards(work: Path, phantom: Path, shard_size: int) -> Path:
    """Shards of ``phantom`` stored at ``shard_size``² (the writer reuses complete shards of the same config)."""
    from cxrdist.data.writer import WriterConfig, write_dataset

    out = work / f"shards-{phantom.name}-{shard_size}"
    cfg = WriterConfig(nih_root=str(phantom), out=str(out), size=shard_size, samples_per_shard=1000, workers=2)
    t0 = time.perf_counter()
    write_dataset(cfg, progress=False)
    print(f"shards: {out} ({shard_size}², ready in {time.perf_counter() - t0:.1f} s)")
    return out


def add_shard_arguments(parser: argparse.ArgumentParser, num_images: int, size: int) -> None:
    """``--shards`` or a phantom of ``--num-images`` at ``--size``² written as ``--shard-size``² shards under
    ``--work-dir`` (the benchmarks that read shards without the loader table's own options)."""
    parser.add_argument("--shards", type=Path, help="an existing shard root (else drawn + written under --work-dir)")
    parser.add_argument("--num-images", type=int, default=num_images)
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/cxrdist-bench"))


def shards_from(args: argparse.Namespace) -> Path:
    """The shard root :func:`add_shard_arguments` asked for (the phantom and its shards made or reused)."""
    if args.shards is not None:
        return args.shards
    return get_shards(args.work_dir, get_phantom(args.work_dir, args.num_images, args.size, 2), args.shard_size)


def _baseline_loader(args: argparse.Namespace, keys: list[str]):
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms as T

    from cxrdist.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    tf = T.Compose(
        [
            T.Resize(256),
            T.RandomCrop(224),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )

    class PngFolder(Dataset):
        def __len__(self) -> int:
            return len(keys)

        def __getitem__(self, i: int):
            with Image.open(args.phantom / "images" / f"{keys[i]}.png") as im:
                img = im.convert("RGB")
            return tf(img), torch.zeros(14)

    return DataLoader(PngFolder(), batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=True)


def child(args: argparse.Namespace) -> None:
    """Run one loader: a warm-up batch, then ``--epochs`` timed epochs; print one JSON line."""
    import torch

    from cxrdist.data.loaders.base import LoaderSpec
    from cxrdist.data.loaders.factory import build_loader
    from cxrdist.data.reader import ShardReader

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    kib = 1.0 / 1024.0
    children_at_start = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib  # `import torch` forks ldconfig
    if args.child in ("d", "e", "k"):
        print(json.dumps(_bare_child(args) | {"rss_children_at_start_mib": children_at_start}))
        return
    if args.child == "c":
        loader = _baseline_loader(args, ShardReader(args.shards, "train").keys)
    else:
        spec = LoaderSpec(root=str(args.shards), split="train", train=True, batch_per_rank=args.batch, ops=TRAIN_OPS,
                          normalize="imagenet", channels=3, workers=args.workers, resample=args.resample)  # fmt: skip
        backend = "dali" if args.child == "a" else "torch"
        loader = build_loader(backend, spec, device=torch.device("cpu"), dali_threads=args.workers)
    if args.warm_epoch:  # a whole untimed epoch first: one-off start-up (DALI's first pipeline, lazy imports) left out
        for _ in loader:
            pass
    cpu0 = _cpu_seconds()  # CPU from here counts the warm-up batch too (its workers' time is counted with the epoch's)
    it = iter(loader)
    first = next(it)
    shape = tuple((first["image"] if isinstance(first, dict) else first[0]).shape)
    t0, images = time.perf_counter(), 0
    for epoch in range(args.epochs):
        for batch in it if epoch == 0 else loader:
            images += len(batch["image"] if isinstance(batch, dict) else batch[0])
    dt = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    del it, loader  # persistent workers end (and are reaped) with their loader: their peak RSS counts below
    gc.collect()
    print(json.dumps({
        "images": images, "seconds": dt, "cpu_seconds": cpu * images / (images + shape[0]),
        "shape": shape, "rss_children_at_start_mib": children_at_start,
        "rss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib,
        "rss_children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib,
    }))  # fmt: skip


def _cpu_seconds() -> float:
    """User + system CPU time of this process, its reaped children and its live children (persistent DataLoader
    workers are reaped only when the loader goes; ``/proc/<pid>/stat`` gives their time so far)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + _live_children_cpu()


def _live_children_cpu() -> float:
    """CPU seconds (user + system) of this process's running children, from /proc (Linux)."""
    me, tick, total = str(os.getpid()), os.sysconf("SC_CLK_TCK"), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        except OSError:  # the process ended while we looked
            continue
        if fields[1] == me:  # ppid; utime and stime are fields 14 and 15 of the line (11 and 12 here)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _bare_child(args: argparse.Namespace) -> dict:
    """(d), (k) or (e) in this process on one thread (``benchmarks/bare.py``)."""
    from benchmarks.bare import bare_loop, decode_only, kept_batches_loop
    from cxrdist.data.reader import ShardReader

    reader = ShardReader(args.shards, "train")
    src = (args.shard_size, args.shard_size)
    if args.child == "d":
        r = bare_loop(reader, TRAIN_OPS, src, args.min_seconds)
    elif args.child == "k":
        r = kept_batches_loop(reader, TRAIN_OPS, src, args.batch, args.min_seconds)
    else:
        r = decode_only(reader, args.min_seconds)
    kib = 1.0 / 1024.0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return r | {"shape": [3, 224, 224], "rss_self_mib": usage.ru_maxrss * kib, "rss_children_mib": 0.0}


def main(argv: list[str] | None = None) -> None:
    """Prepare phantom and shards, run each loader in its own subprocess, interleaved; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=400, help="phantom images")
    parser.add_argument("--size", type=int, default=1024, help="phantom PNG size (the baseline decodes these)")
    parser.add_argument("--shard-size", type=int, default=256, help="stored JPEG size of the shards")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers = DALI threads")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per loader run")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs per loader (medians reported)")
    parser.add_argument("--resample", choices=("float", "uint8"), default="float",
                        help="(a), (b): loader.resample (float: the exact default)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads of the loader process (0: torch's)")
    parser.add_argument("--warm-epoch", action="store_true", help="an untimed epoch before the warm-up batch")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="(d), (e): time at least this long")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/cxrdist-bench"), help="phantom + shard cache")
    parser.add_argument("--child", choices=sorted(KINDS), help=argparse.SUPPRESS)
    parser.add_argument("--phantom", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return

    phantom = get_phantom(args.work_dir, args.num_images, args.size, workers=2)
    shards = get_shards(args.work_dir, phantom, args.shard_size)
    from cxrdist.data.reader import ShardReader

    n_train = len(ShardReader(shards, "train"))
    print(f"cpus available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f}")
    print(
        f"train split: {n_train} images; batch {args.batch}, {args.workers} workers/threads, {args.epochs} timed "
        f"epochs after {'1 untimed epoch + ' if args.warm_epoch else ''}1 warm-up batch; "
        f"intra-op threads {args.threads or 'torch default'}; loaders resample in {args.resample}; baseline reads "
        f"{args.size}² PNGs, shards hold {args.shard_size}² JPEGs"
    )
    common = ["--batch", str(args.batch), "--workers", str(args.workers), "--epochs", str(args.epochs)]
    common += ["--shard-size", str(args.shard_size), "--min-seconds", str(args.min_seconds)]
    common += ["--warm-epoch"] if args.warm_epoch else []
    common += ["--threads", str(args.threads), "--resample", args.resample]
    common += ["--phantom", str(phantom), "--shards", str(shards)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    runs: dict[str, list[dict]] = {k: [] for k in KINDS}
    for rep in range(args.repeat):
        for kind in KINDS:
            cmd = [sys.executable, "-m", "benchmarks.loader", "--child", kind, *common]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                print(f"  {KINDS[kind]}: failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["rate"] = r["images"] / r["seconds"]
            runs[kind].append(r)
        print(f"  repeat {rep + 1}: " + ", ".join(f"({k}) {v[-1]['rate']:.1f} img/s" for k, v in runs.items() if v))

    report(runs, args.workers)


def report(runs: dict[str, list[dict]], workers: int) -> None:
    """The table (medians over repeats), per-core figures against (d), and the goals."""
    med = {k: statistics.median(r["rate"] for r in v) if v else float("nan") for k, v in runs.items()}
    cores = {k: (1 if k in ("d", "e", "k") else workers) for k in runs}
    per_core = {k: med[k] / cores[k] for k in runs}
    per_cpu = {k: statistics.median(r["images"] / r["cpu_seconds"] for r in v) if v else float("nan")
               for k, v in runs.items()}  # fmt: skip
    print(f"\n{'loader':36s} {'img/s (median)':>14s} {'min':>8s} {'max':>8s} {'vs (c)':>7s} {'/core':>7s} "
          f"{'vs (d)':>7s} {'img/CPU-s':>9s} {'vs (d)':>7s} {'peak RSS self':>14s} {'largest child':>14s}")  # fmt: skip
    for k, v in runs.items():
        if not v:
            continue
        rates = [r["rate"] for r in v]
        rss_s, rss_c = max(r["rss_self_mib"] for r in v), max(r["rss_children_mib"] for r in v)
        print(f"({k}) {KINDS[k]:32s} {med[k]:14.1f} {min(rates):8.1f} {max(rates):8.1f} {med[k] / med['c']:7.2f} "
              f"{per_core[k]:7.1f} {per_core[k] / per_core['d']:7.2f} "
              f"{per_cpu[k]:9.1f} {per_cpu[k] / per_cpu['d']:7.2f} "
              f"{rss_s:10.0f} MiB {rss_c:10.0f} MiB")  # fmt: skip
    floor = max((r["rss_children_at_start_mib"] for v in runs.values() for r in v), default=0.0)
    print(f"largest child: ru_maxrss of the biggest reaped child; {floor:.0f} MiB of it is already there before the "
          "loader starts (`ldconfig -p`, forked by `import torch` from the grown parent)")  # fmt: skip
    print(f"/core: img/s over the cores given (loaders: {workers} workers/threads; (d), (e): 1); img/CPU-s: images "
          "per CPU-second of the process and its children (reaped or running)")  # fmt: skip
    ratio = med["a"] / med["c"]
    print(f"\ngoal: (a) DALI >= {GOAL:.0f}x (c) baseline -> {ratio:.2f}x {'MET' if ratio >= GOAL else 'MISSED'}")
    for k in ("a", "b"):
        r = per_core[k] / per_core["d"]
        print(
            f"goal: ({k}) per core >= {GOAL_BARE}x (d) -> {r:.2f}x {'MET' if r >= GOAL_BARE else 'MISSED'} "
            f"(per CPU-second: {per_cpu[k] / per_cpu['d']:.2f}x)"
        )
    if runs.get("k"):
        print(f"against (k), the bare loop that keeps its batches as a loader must (not a goal): (a) "
              f"{per_cpu['a'] / per_cpu['k']:.2f}x, (b) {per_cpu['b'] / per_cpu['k']:.2f}x per CPU-second; "
              f"(k) is {per_cpu['k'] / per_cpu['d']:.2f}x (d)")  # fmt: skip


if __name__ == "__main__":
    main()
