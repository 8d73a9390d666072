"""Benchmark [G8]: the GPU path in one short run: is the loader or the model the bottleneck?

On one device it reports, each timed after a warm-up:
(1) decode: img/s of DALI's image decoder on the shards' JPEGs (nvjpeg, ``device="mixed"``, on a GPU; DALI's CPU
    decoder without one), bytes already in memory, fed through ``external_source`` a batch at a time;
(2) loaders: img/s of the DALI loader (GPU decode + crop/resize/flip on the device, the batch handed to torch
    without a host copy) and of the torch loader (PIL workers, pinned memory, non-blocking copies) at the
    training size, ending on the device, normalised;
(3) model: training img/s of CheXNet's DenseNet-121 (forward, BCE, backward, Adam) on a fixed batch already on
    the device: fp32, bf16 autocast, bf16 + channels_last, bf16 + channels_last + torch.compile (the engine's own
    :func:`cxrdist.engine.accel.apply_fast_path`);
(4) end to end: img/s of the real ``Trainer`` epoch loop (chexnet config, DDP strategy, one rank) with each loader,
    the fast path the engine picks by capability (``engine.precision/channels_last=auto``; ``--compile`` sets
    ``engine.compile``) and the ratio to (3)'s matching variant: well below 1 means the loader (or the engine) is
    what limits training.
Without CUDA it runs the same code on the CPU; ``--tiny`` is the CI configuration (seconds: tiny phantom, 32 px,
batch 2, a few steps, compile skipped) whose figures mean nothing.
Run: ``.venv/bin/python -m benchmarks.gpu [--shards DIR] [--size 512 --num-images 512] [--batch 128]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Run as a plain script from a checkout where cxrdist is not installed into the venv.
from cxrdist.config import compose
from cxrdist.data.loaders.base import LoaderSpec
from cxrdist.data.loaders.factory import build_loader
from cxrdist.data.reader import ShardReader
from cxrdist.dist import DistEnv
from cxrdist.engine.accel import FastPath, apply_fast_path
from cxrdist.engine.losses import bce
from cxrdist.engine.stages import StageContext, TrainStage
from cxrdist.engine.trainer import Trainer
from cxrdist.log import Tracker
from cxrdist.models.baselines import build_chexnet

MODEL_VARIANTS = {
    "fp32": FastPath(dtype=None, channels_last=False, compile_mode=None),
    "bf16": FastPath(dtype=torch.bfloat16, channels_last=False, compile_mode=None),
    "bf16+channels_last": FastPath(dtype=torch.bfloat16, channels_last=True, compile_mode=None),
    "bf16+channels_last+compile": FastPath(dtype=torch.bfloat16, channels_last=True, compile_mode="default"),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_rate(shards: Path, device: torch.device, batch: int, seconds: float, threads: int) -> float:
    """(1) img/s of DALI's decoder (nvjpeg on a GPU) over the train split's JPEGs, held in memory."""
    from nvidia.dali import fn, pipeline_def, types

    from cxrdist.data.loaders.dali import dali_device_id

    reader = ShardReader(shards, "train")
    jpegs = [np.frombuffer(reader.jpeg(i), dtype=np.uint8) for i in range(len(reader))]
    device_id = dali_device_id(device)
    state = {"k": 0}

    def source():
        k = state["k"]
        state["k"] = k + batch
        return [jpegs[(k + j) % len(jpegs)] for j in range(batch)]

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=device_id, prefetch_queue_depth=2,
                  exec_dynamic=True)  # fmt: skip
    def pipe():
        data = fn.external_source(source=source, batch=True)
        return fn.decoders.image(data, device="cpu" if device_id is None else "mixed", output_type=types.GRAY)

    p = pipe()
    p.build()
    for _ in range(2):
        p.run()
    images, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        (out,) = p.run()
        images += batch
    if device_id is not None:
        out.as_cpu()  # waits for the last batch
    return images / (time.perf_counter() - t0)


def loader_rate(backend: str, shards: Path, device: torch.device, args: argparse.Namespace) -> float:
    """(2) img/s of one project loader at the training size, batches on ``device``, normalised."""
    ops = [{"op": "random_resized_crop", "size": args.image_size}, {"op": "hflip"}]
    spec = LoaderSpec(root=str(shards), split="train", train=True, batch_per_rank=args.batch, ops=ops,
                      normalize="imagenet", channels=3, workers=args.workers)  # fmt: skip
    loader = build_loader(backend, spec, device=device, dali_threads=args.threads)
    next(iter(loader))  # warm-up (workers / pipeline start)
    images, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        for b in loader:
            images += len(b["index"])
    _sync(device)
    return images / (time.perf_counter() - t0)


def model_rate(variant: str, device: torch.device, args: argparse.Namespace) -> float:
    """(3) training img/s of DenseNet-121 on one fixed batch already on the device."""
    fast = MODEL_VARIANTS[variant]
    torch.manual_seed(0)
    model = apply_fast_path(build_chexnet(pretrained=False).to(device), fast).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = (torch.rand(args.batch, 14, device=device) < 0.1).float()

    def step() -> None:
        with torch.autocast(device.type, dtype=fast.dtype, enabled=fast.dtype is not None):
            loss = bce(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):  # compile happens here
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    return args.steps * args.batch / (time.perf_counter() - t0)


def trainer_rate(backend: str, shards: Path, work: Path, args: argparse.Namespace) -> tuple[float, str]:
    """(4) img/s of the real Trainer's epoch loop with ``backend``; also the fast path it picked."""
    cfg = compose([
        "method=chexnet", f"data.root={shards}", f"run_dir={work}", "logger=none", f"loader={backend}",
        "method.model.pretrained=false", f"method.stages.train.global_batch={args.batch}",
        f"engine.max_batch_per_rank={args.batch}", f"method.stages.train.max_steps_per_epoch={args.steps}",
        "engine.progress=false", "engine.ckpt_every_steps=1000000000", "engine.ckpt_every_minutes=1e9",
        f"loader.workers={args.workers}", f"loader.dali_threads={args.threads}", f"engine.compile={args.compile}",
        f"method.stages.train.transforms.train=[{{op: random_resized_crop, size: {args.image_size}}}, {{op: hflip}}]",
    ])  # fmt: skip
    ctx = StageContext(cfg=cfg, run_dir=work, env=DistEnv(), tracker=Tracker(), stage_dir=work / backend)
    trainer = Trainer(ctx, TrainStage("bench", cfg.method.stages.train, lambda c: build_chexnet(pretrained=False)))
    trainer._last_ckpt_time = time.monotonic()  # set by Trainer.run, which also validates and checkpoints
    trainer._run_epoch()  # warm-up epoch: pipeline/workers, cuDNN autotuning, compile
    _sync(ctx.env.device)
    t0 = time.perf_counter()
    trainer._run_epoch()
    _sync(ctx.env.device)
    return args.steps * args.batch / (time.perf_counter() - t0), trainer.strategy.fast.describe()


def prepare_shards(args: argparse.Namespace) -> Path:
    """``--shards`` or a phantom written as shards at ``--size`` under ``--work-dir`` (cached)."""
    from benchmarks.loader import get_phantom, get_shards

    if args.shards:
        return args.shards
    workers = max(1, len(os.sched_getaffinity(0)))
    return get_shards(args.work_dir, get_phantom(args.work_dir, args.num_images, args.size, workers), args.size)


def tiny(args: argparse.Namespace) -> None:
    """The CI configuration: seconds on a CPU, every section run."""
    args.num_images, args.size, args.image_size, args.batch = 64, 64, 32, 2
    args.steps, args.warmup, args.seconds, args.workers, args.threads = 1, 0, 0.2, 0, 1
    args.skip_compile = True


def run(args: argparse.Namespace) -> dict:
    """Every section; returns the figures (also printed)."""
    device = DistEnv().device
    shards = prepare_shards(args)
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    print(f"device: {out['device']}; shards {shards}; batch {args.batch}; {args.image_size}² training size")
    out["decode"] = decode_rate(shards, device, args.batch, args.seconds, args.threads)
    print(f"(1) decode ({'nvjpeg' if device.type == 'cuda' else 'DALI CPU'}): {out['decode']:.0f} img/s")
    out["loader"] = {b: loader_rate(b, shards, device, args) for b in ("dali", "torch")}
    for b, r in out["loader"].items():
        print(f"(2) {b} loader: {r:.0f} img/s")
    out["model"] = {}
    for v in MODEL_VARIANTS:
        if MODEL_VARIANTS[v].compile_mode and (args.skip_compile or device.type != "cuda"):
            print(f"(3) model {v}: skipped ({'--tiny' if args.skip_compile else 'CPU'}; compile is measured on a GPU)")
            continue
        out["model"][v] = model_rate(v, device, args)
        print(f"(3) model {v}: {out['model'][v]:.0f} img/s ({out['model'][v] / out['model']['fp32']:.2f}x fp32)")
    out["trainer"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for b in ("dali", "torch"):
            rate, fast = trainer_rate(b, shards, Path(tmp) / b, args)
            key = _model_key(fast)
            ref = out["model"].get(key)
            out["trainer"][b] = {"rate": rate, "fast_path": fast, "vs_model": rate / ref if ref else None}
            vs = f", {rate / ref:.2f}x model-only {key}" if ref else ""
            print(f"(4) trainer with {b} loader ({fast}): {rate:.0f} img/s{vs}")
    return out


def _model_key(fast: str) -> str:
    """(3)'s variant matching the Trainer's fast path description."""
    key = "bf16" if fast.startswith("bf16") else "fp32"
    if "channels_last" in fast:
        key += "+channels_last"
    return key + "+compile" if "compile (" in fast else key


def main(argv: list[str] | None = None) -> None:
    """Parse, run, print a JSON line of every figure last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, help="existing shards (else a phantom is drawn and written)")
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--size", type=int, default=512, help="phantom and stored JPEG size")
    parser.add_argument("--image-size", type=int, default=224, help="training input size")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (model, trainer epoch)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed model steps first (compile happens there)")
    parser.add_argument("--seconds", type=float, default=10.0, help="decode and loader timing")
    parser.add_argument("--workers", type=int, default=2, help="torch loader workers (a GPU's share of cores)")
    parser.add_argument("--threads", type=int, default=2, help="DALI threads")
    parser.add_argument("--compile", default="false", help="engine.compile for (4): false | true | a mode")
    parser.add_argument("--skip-compile", action="store_true", help="leave out (3)'s compile variant")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/cxrdist-bench"))
    parser.add_argument("--tiny", action="store_true", help="CI: seconds on a CPU, figures meaningless")
    args = parser.parse_args(argv)
    if args.tiny:
        tiny(args)
    t0 = time.perf_counter()
    out = run(args)
    print(f"total {time.perf_counter() - t0:.0f} s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
