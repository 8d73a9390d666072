"""Benchmark [F3]: optimizer steps/s of the real training loop (DDP and DeepSpeed ZeRO-0/1/2) vs a bare loop.

The engine side drives the real ``cxrdist.engine.trainer.Trainer`` (``Trainer._run_epoch``: forward under the
strategy's autocast, loss, the per-micro-step ``_sync`` all-reduce, ``strategy.backward`` → optimizer step,
logging) built from a composed chexnet config with ``engine=ddp|deepspeed`` and ``build_strategy``; only the
loader is replaced by an in-memory one. The bare loop is plain PyTorch (forward, BCE, backward, Adam step,
zero_grad) on the same model (same seed), batch and in-memory tensors; at ``--world 2`` it is bare DDP
(``torch.multiprocessing`` spawn + gloo) with the engine's synchronised BatchNorm (``engine.sync_bn``, default on),
and rank 0's times are reported. fp32 on the CPU. ``ddp-local-bn`` is the engine with ``engine.sync_bn=false``
(BatchNorm over each rank's batch only): at ``--world 2`` its ratio to ``ddp`` is what synchronising costs.
Every variant is built and warmed up first (DeepSpeed's one-off comm-op JIT build happens there), then the
variants are timed interleaved ``--repeat`` times; medians (the ratio: median of per-round ratios).
Wall time is the goal's measure; this process's CPU time per step is printed too (steadier on a shared machine).

Goal: bare / engine ≤ 1.05 (steps/s), i.e. the engine costs ≤ 5 %.
Run: ``.venv/bin/python -m benchmarks.engine_overhead [--world 1|2] [--model resnet18|cnn] [--steps 30]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch
from torch import nn

from cxrdist import dist
from cxrdist.config import compose
from cxrdist.engine.losses import bce
from cxrdist.engine.optim import build_optimizer
from cxrdist.engine.stages import StageContext, TrainStage
from cxrdist.engine.syncbn import convert_sync_batchnorm
from cxrdist.engine.trainer import Trainer
from cxrdist.log import Tracker

GOAL = 1.05
# ddp-local-bn: the engine with engine.sync_bn=false (BatchNorm per rank): what synchronised BatchNorm costs on CPU
VARIANTS = ("bare", "ddp", "ddp-local-bn", "deepspeed-z0", "deepspeed-z1", "deepspeed-z2")


def build_model(name: str) -> nn.Module:
    """resnet18 (torchvision, 14 outputs) or a small 4-conv CNN."""
    if name == "resnet18":
        from torchvision.models import resnet18

        return resnet18(num_classes=14)
    layers: list[nn.Module] = []
    for c_in, c_out in ((3, 32), (32, 64), (64, 128), (128, 256)):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 14))


class MemLoader:
    """The slice of the loader interface the trainer's epoch loop uses, over in-memory batches."""

    epoch = 0

    def __init__(self, batches: list[dict[str, torch.Tensor]]):
        self.batches, self.steps = batches, len(batches)
        self.sampler = SimpleNamespace(state=SimpleNamespace(consumed=0))

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return (self.batches[i % len(self.batches)] for i in range(self.steps))


class MemContext(StageContext):
    """A StageContext whose loaders are the in-memory one."""

    mem_loader: MemLoader | None = None

    def build_loader(self, stage: TrainStage, **kwargs: Any) -> MemLoader:
        return self.mem_loader


def make_batches(n: int, batch: int, size: int, rank: int) -> list[dict[str, torch.Tensor]]:
    """``n`` fixed batches of random images and labels (different per rank)."""
    g = torch.Generator().manual_seed(1000 + rank)
    out = []
    for _ in range(n):
        labels = (torch.rand(batch, 14, generator=g) < 0.1).float()
        pos = float(labels.sum())  # the loaders' (P, N) of the optimizer step; here of the micro-batch (bce ignores it)
        counts = torch.tensor([pos, labels.numel() - pos], dtype=torch.float64)
        out.append({"image": torch.randn(batch, 3, size, size, generator=g), "labels": labels,
                    "index": torch.arange(batch), "step_label_counts": counts})  # fmt: skip
    return out


def build_variant(name: str, args: argparse.Namespace, env: dist.DistEnv, batches: list, work: Path):
    """A callable running ``steps`` optimizer steps of one variant."""
    strategy, zero = ("ddp", 0) if name in ("bare", "ddp", "ddp-local-bn") else ("deepspeed", int(name[-1]))
    cfg = compose([
        "method=chexnet", f"data.root={work}", f"run_dir={work}", "logger=none", f"engine={strategy}",
        f"engine.zero_stage={zero}", f"method.stages.train.global_batch={args.batch * env.world_size}",
        f"engine.max_batch_per_rank={args.batch}", "engine.progress=false", "engine.ckpt_every_steps=1000000000",
        "engine.ckpt_every_minutes=1e9", "engine.precision=fp32", f"engine.sync_bn={name != 'ddp-local-bn'}",
    ])  # fmt: skip
    if name == "bare":
        torch.manual_seed(cfg.seed)  # the trainer seeds the same way before building the model
        model = build_model(args.model)
        opt = build_optimizer(model.parameters(), cfg.method.stages.train.optim)
        if env.world_size > 1:
            if cfg.engine.sync_bn:  # the same BatchNorm the engine runs (engine.sync_bn): equal work on both sides
                model = convert_sync_batchnorm(model, env.device)[0]
            model = nn.parallel.DistributedDataParallel(model)
        model.train()

        def run_bare(steps: int) -> None:
            for i in range(steps):
                b = batches[i % len(batches)]
                loss = bce(model(b["image"]), b["labels"])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

        return run_bare
    ctx = MemContext(cfg=cfg, run_dir=work, env=env, tracker=Tracker(), stage_dir=work / name)
    ctx.mem_loader = MemLoader(batches)
    trainer = Trainer(ctx, TrainStage("bench", cfg.method.stages.train, lambda c: build_model(args.model)))

    def run_engine(steps: int) -> None:
        trainer._last_ckpt_time = time.monotonic()
        ctx.mem_loader.steps = steps
        trainer._run_epoch()

    return run_engine


def worker(rank: int, world: int, port: int, args: argparse.Namespace, result: str) -> None:
    """Build, warm up and time every variant on this rank; rank 0 writes the times to ``result``."""
    torch.set_num_threads(args.threads or max(1, len(os.sched_getaffinity(0)) // world))
    env = dist.DistEnv(rank=rank, world_size=world, local_rank=rank, local_world_size=world, master_port=port)
    if world == 1 and any(v.startswith("deepspeed") for v in args.variants):
        # DeepSpeedStrategy passes dist_init_required=False at world 1, and DeepSpeed then asserts that a process
        # group and LOCAL_RANK exist: give it a 1-rank gloo group (dist.is_distributed() stays False).
        from cxrdist.dist import free_port

        port = free_port()
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})  # fmt: skip
    dist.init(env)
    batches = make_batches(4, args.batch, args.image_size, rank)
    runs, setup = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            t0 = time.perf_counter()
            runs[name] = build_variant(name, args, env, batches, Path(tmp))
            runs[name](args.warmup)
            setup[name] = time.perf_counter() - t0
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}  # (wall, this process's CPU) s
        for _ in range(args.repeat):
            for name, run in runs.items():
                dist.barrier()
                t0, c0 = time.perf_counter(), time.process_time()
                run(args.steps)
                times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    if rank == 0:
        Path(result).write_text(json.dumps({"times": times, "setup": setup, "threads": torch.get_num_threads()}))
    dist.shutdown()


def main(argv: list[str] | None = None) -> None:
    """Run the variants at the chosen world size, print steps/s and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=1, help="processes (gloo); 2 compares against bare DDP")
    parser.add_argument("--model", choices=("cnn", "resnet18"), default="cnn", help="cnn: 4 conv-BN-ReLU layers")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16, help="per rank")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant after building it")
    parser.add_argument("--repeat", type=int, default=7, help="interleaved timed runs (medians reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (0: cores / world)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args(argv)
    if "bare" not in args.variants:
        args.variants.insert(0, "bare")

    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "result.json")
        t0 = time.perf_counter()
        if args.world == 1:
            worker(0, 1, 0, args, result)
        else:
            import torch.multiprocessing as mp

            from cxrdist.dist import free_port

            mp.start_processes(worker, args=(args.world, free_port(), args, result), nprocs=args.world,
                               start_method="spawn")  # fmt: skip
        res = json.loads(Path(result).read_text())
    print(f"cpus available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f}; total "
          f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    print(
        f"{args.model} at {args.image_size}², batch {args.batch}/rank, fp32, world {args.world} "
        f"({'bare DDP' if args.world > 1 else 'bare loop'} baseline), {res['threads']} torch threads/rank, "
        f"{args.steps} timed steps x {args.repeat} interleaved runs after {args.warmup} warm-up steps"
    )
    if args.world == 1 and any(v.startswith("deepspeed") for v in args.variants):
        print("note: world 1 runs DeepSpeed on a 1-rank gloo group made here (the strategy cannot start without one)")
    times = res["times"]
    rate = {k: [args.steps / w for w, _ in v] for k, v in times.items()}
    cpu_ms = {k: statistics.median(1e3 * c / args.steps for _, c in v) for k, v in times.items()}
    print(f"\n{'variant':14s} {'steps/s (median)':>16s} {'min':>7s} {'max':>7s} {'bare/engine':>12s} "
          f"{'CPU ms/step':>12s} {'CPU ratio':>10s} {'setup s':>8s}")  # fmt: skip
    worst = 0.0
    for k, v in rate.items():
        # Paired: each round's engine run against the bare run next to it, then the median over rounds.
        ratio = statistics.median(e[0] / b[0] for e, b in zip(times[k], times["bare"]))
        worst = max(worst, ratio) if k != "bare" else worst
        print(f"{k:14s} {statistics.median(v):16.2f} {min(v):7.2f} {max(v):7.2f} {ratio:12.3f} {cpu_ms[k]:12.2f} "
              f"{cpu_ms[k] / cpu_ms['bare']:10.3f} {res['setup'][k]:8.1f}")  # fmt: skip
    print("bare/engine: median over rounds of (engine wall time / bare wall time) of the same round")
    verdict = "MET" if worst <= GOAL else "MISSED"
    print(f"\ngoal: bare / engine <= {GOAL} for every engine variant -> worst {worst:.3f} {verdict}")


if __name__ == "__main__":
    main()
