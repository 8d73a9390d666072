"""Benchmark [G8]: the loaders' feed rate, everything they do per sample except decode and augmentation.

On a GPU node nvjpeg decodes and DALI resizes on the device, so what is left on a rank's CPU is Python: the
sampler's plan, the reads at the ``.idx`` offsets, the crop windows and flips drawn per batch, feeding DALI's
``external_source`` and handing the batch over to torch (labels, indices, the optimizer step's label counts).
Two loaders do exactly that with the decode taken out, on one thread:

- (f) torch path: the loader's real ``_join`` and sampler; each batch's bytes are read and windows drawn as the
  torch loader's workers do (``reader.jpeg`` per sample + one ``draw_geometries`` per batch), and a 1×1 image
  stands in for the decoded one.
- (g) DALI path: the real ``DaliLoader`` with its real ``external_source`` callable and pipeline, minus the
  decode/slice/resize/flip operators (the pipeline returns the fed flips and indices); CPU pipeline, 1 thread.

Each is timed in wall time and in samples per CPU-second of the process (on a shared machine the second is the
one-core figure), then (f)'s CPU time per sample is split into its parts; the windows line is the loaders' real
batched draw (counter-based uniforms + the vectorised op chain, ``transforms.sample_geometries``; it was 40–47 µs
a sample when each sample had its own seeded NumPy generator). Goal: ≥ 5,000 samples/s per rank on one core.
Run: ``.venv/bin/python -m benchmarks.feed [--shards DIR | --num-images 400 --size 1024 --shard-size 256]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from benchmarks.loader import add_shard_arguments, shards_from
from cxrdist.data.loaders.base import BaseLoader, LoaderSpec

# Run as a plain script from a checkout where cxrdist is not installed into the venv.
from cxrdist.data.loaders.dali import DaliLoader

GOAL = 5000.0
TRAIN_OPS = [{"op": "resize", "size": 256}, {"op": "random_resized_crop", "size": 224}, {"op": "hflip"}]


class NullDecodeLoader(BaseLoader):
    """(f): the torch loader's per-sample reads and windows, no decode; a 1×1 image per sample."""

    def _image_batches(self, epoch: int, plan: list[tuple[np.ndarray, np.ndarray]]) -> Iterator[torch.Tensor]:
        for indices, positions in plan:
            for i in indices.tolist():
                self.reader.jpeg(i)
            self.geometries(indices, positions, epoch)
            yield torch.zeros(len(indices), 1, 1, 1)


class NullDecodeDali(DaliLoader):
    """(g): the DALI loader's feeding and hand-over; the pipeline has no image operators."""

    def _build(self, source):
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=self.spec.batch_per_rank, num_threads=self.num_threads, device_id=self.device_id,
                      prefetch_queue_depth=2, exec_dynamic=True)  # fmt: skip
        def pipe():
            _jpegs, _anchor, _shape, flip, index = fn.external_source(
                source=source, num_outputs=5, batch=True, no_copy=False
            )
            return fn.reshape(fn.cast(flip, dtype=types.FLOAT), shape=[1, 1, 1]), index

        with warnings.catch_warnings():  # "outputs 0, 1, 2 are not used": the decode operators are left out here
            warnings.simplefilter("ignore")
            p = pipe()
            p.build()
        return p


def make_spec(shards: Path, batch: int) -> LoaderSpec:
    """The benchmark's training spec (224² from 256² shards, like benchmarks/loader.py)."""
    return LoaderSpec(root=str(shards), split="train", train=True, batch_per_rank=batch, ops=TRAIN_OPS,
                      normalize="imagenet", channels=3, workers=0)  # fmt: skip


def time_epochs(loader: BaseLoader, min_seconds: float) -> dict[str, float]:
    """Whole epochs (one warm-up batch first) until ``min_seconds``; samples, wall and CPU seconds."""
    next(iter(loader))
    samples, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < min_seconds:
        for b in loader:
            samples += len(b["index"])
    return {"samples": samples, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


def breakdown(loader: BaseLoader, batch: int) -> dict[str, float]:
    """CPU µs per sample of each part of (f) over one epoch, timed one part at a time (thread CPU time: the
    machine may be shared)."""
    clock = time.thread_time
    t0 = clock()
    plan = loader.sampler.remaining_batches()
    out = {"sampler plan": clock() - t0}
    flat = [(int(i), int(p)) for idx, pos in plan for i, p in zip(idx, pos)]
    t0 = clock()
    for i, _ in flat:
        loader.reader.jpeg(i)
    out["reads (reader.jpeg)"] = clock() - t0
    t0 = clock()
    for indices, positions in plan:
        loader.geometries(indices, positions, 0)
    out["windows (geometries, one draw per batch)"] = clock() - t0
    images = torch.zeros(batch, 1, 1, 1)
    t0 = clock()
    for indices, positions in plan:
        loader._join(images, indices, positions, 0)
        loader._step_label_counts(0, int(positions[0]))
    out["hand-over (_join + label counts)"] = clock() - t0
    return {k: 1e6 * v / len(flat) for k, v in out.items()}


def run(shards: Path, batch: int, min_seconds: float, repeat: int) -> dict:
    """(f) and (g) interleaved ``repeat`` times; medians; plus (f)'s breakdown. Returns the figures."""
    torch.set_num_threads(1)
    spec = make_spec(shards, batch)
    loaders = {"f": NullDecodeLoader(spec), "g": NullDecodeDali(spec, device=torch.device("cpu"), num_threads=1)}
    runs: dict[str, list[dict]] = {k: [] for k in loaders}
    for _ in range(repeat):
        for k, loader in loaders.items():
            runs[k].append(time_epochs(loader, min_seconds))
    rate = {k: statistics.median(r["samples"] / r["seconds"] for r in v) for k, v in runs.items()}
    per_cpu = {k: statistics.median(r["samples"] / r["cpu_seconds"] for r in v) for k, v in runs.items()}
    parts = breakdown(loaders["f"], batch)
    return {"rate": rate, "per_cpu": per_cpu, "breakdown": parts}


def main(argv: list[str] | None = None) -> None:
    """Prepare the shards (or take ``--shards``), run, print the table and the goal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shard_arguments(parser, num_images=400, size=1024)
    parser.add_argument("--batch", type=int, default=128, help="per rank (a GPU rank's batch)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="per timed run")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs (medians)")
    args = parser.parse_args(argv)
    shards = shards_from(args)
    print(f"cpus available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f}")
    print(f"{shards}: batch {args.batch}, one thread, {args.repeat} interleaved runs of >= {args.min_seconds} s")
    res = run(shards, args.batch, args.min_seconds, args.repeat)
    names = {"f": "torch path: plan+reads+windows+hand-over", "g": "DALI path: + external_source feeding"}
    print(f"\n{'feed (no decode)':44s} {'samples/s':>10s} {'per CPU-s':>10s} {'vs goal':>8s}")
    for k, name in names.items():
        print(f"({k}) {name:40s} {res['rate'][k]:10.0f} {res['per_cpu'][k]:10.0f} {res['rate'][k] / GOAL:8.2f}")
    print("\n(f) CPU time per sample, each part timed alone over one epoch:")
    for part, us in res["breakdown"].items():
        print(f"  {part:44s} {us:8.2f} µs")
    worst, worst_cpu = min(res["rate"].values()), min(res["per_cpu"].values())
    print(f"\ngoal: >= {GOAL:.0f} samples/s on one core -> worst {worst_cpu:.0f} per CPU-second "
          f"{'MET' if worst_cpu >= GOAL else 'MISSED'}; wall {worst:.0f}/s {'MET' if worst >= GOAL else 'MISSED'} "
          f"(wall counts the time other processes hold the core: load average {os.getloadavg()[0]:.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
