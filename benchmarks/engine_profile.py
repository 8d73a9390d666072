"""Benchmark [G8]: where the engine's per-step time goes, by package (bare loop vs DDP vs DeepSpeed ZeRO-0/1/2).

The variants of ``benchmarks/engine_overhead.py`` (the real ``Trainer`` epoch loop on in-memory batches, and the
bare PyTorch loop on the same model and batches) run at world 1 under ``cProfile``. Each function's own time is
booked to a package by its file: ``deepspeed``, ``cxrdist`` (ours: trainer, strategy, losses), ``torch`` (Python
layers of torch, the kernels they call, autograd) or ``other``; a C function's own time (a kernel, a
``.item()``) goes to the package of the Python function that called it, per caller. The extra ms/step over the
bare loop in each package says whose the overhead is. ``--top`` lists the heaviest DeepSpeed and cxrdist
functions of each variant.

Times are this thread's CPU time (the machine may be shared; one torch thread, so the kernels run on it too).
Profiling slows Python-heavy code more than kernels: read the shares, and take the timings themselves from
engine_overhead.py. fp32 on the CPU.
Run: ``.venv/bin/python -m benchmarks.engine_profile [--model cnn|resnet18] [--image-size 64] [--steps 20]``
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from collections import defaultdict
from pathlib import Path

# Run as a plain script from a checkout where cxrdist is not installed into the venv.
import torch

from benchmarks.engine_overhead import VARIANTS, build_variant, make_batches  # (sets DS_ACCELERATOR)
from cxrdist import dist

PACKAGES = ("deepspeed", "cxrdist", "torch", "other")


def package_of(filename: str) -> str:
    """The package a source file belongs to (benchmarks/ counts as ours: it drives the loop)."""
    path = filename.replace(os.sep, "/")
    if "/deepspeed/" in path:
        return "deepspeed"
    if "/cxrdist/" in path or "/benchmarks/" in path:
        return "cxrdist"
    if "/torch/" in path:
        return "torch"
    return "other"


def by_package(stats: pstats.Stats) -> tuple[dict[str, float], dict[tuple, float]]:
    """Own time per package (C functions booked to their callers' packages) and own time per Python function."""
    per_pkg: dict[str, float] = defaultdict(float)
    per_fn: dict[tuple, float] = defaultdict(float)
    for func, (_cc, _nc, tt, _ct, callers) in stats.stats.items():
        filename = func[0]
        if filename not in ("~", "") and not filename.startswith("<"):
            per_pkg[package_of(filename)] += tt
            per_fn[func] += tt
            continue
        booked = 0.0
        for caller, (_c, _n, caller_tt, _ct2) in callers.items():
            per_pkg[package_of(caller[0])] += caller_tt
            booked += caller_tt
            if package_of(caller[0]) in ("deepspeed", "cxrdist"):
                per_fn[(caller[0], caller[1], f"{caller[2]} → {func[2]}")] += caller_tt
        per_pkg["other"] += max(tt - booked, 0.0)
    return dict(per_pkg), dict(per_fn)


def profile_variant(run, steps: int) -> tuple[float, dict[str, float], dict[tuple, float]]:
    """CPU ms/step unprofiled, then the profile of ``steps`` more steps (CPU ms/step per package and function)."""
    t0 = time.thread_time()
    run(steps)
    cpu = 1e3 * (time.thread_time() - t0) / steps
    prof = cProfile.Profile(time.thread_time)  # CPU time of this thread: the machine may be shared
    prof.enable()
    run(steps)
    prof.disable()
    per_pkg, per_fn = by_package(pstats.Stats(prof))
    scale = 1e3 / steps
    return cpu, {k: v * scale for k, v in per_pkg.items()}, {k: v * scale for k, v in per_fn.items()}


def main(argv: list[str] | None = None) -> None:
    """Profile every variant at world 1; print ms/step per package and the extra over the bare loop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("cnn", "resnet18"), default="cnn")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--top", type=int, default=6, help="heaviest deepspeed/cxrdist functions listed per variant")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS,
                        default=["bare", "ddp", "deepspeed-z0", "deepspeed-z1", "deepspeed-z2"])  # fmt: skip
    args = parser.parse_args(argv)
    if "bare" not in args.variants:
        args.variants.insert(0, "bare")
    torch.set_num_threads(1)
    env = dist.DistEnv()
    if any(v.startswith("deepspeed") for v in args.variants):
        from cxrdist.dist import free_port  # as engine_overhead.py: DeepSpeed needs a process group at world 1

        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                                             world_size=1)  # fmt: skip
    batches = make_batches(4, args.batch, args.image_size, 0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            run = build_variant(name, args, env, batches, Path(tmp))
            run(args.warmup)
            results[name] = profile_variant(run, args.steps)
    print(f"cpus available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.2f}")
    print(f"{args.model} at {args.image_size}², batch {args.batch}, fp32, world 1, 1 torch thread, {args.steps} steps")
    print(f"\n{'variant':14s} {'CPU ms/step':>12s} " + " ".join(f"{p:>10s}" for p in PACKAGES)
          + f" {'profiled':>9s}  extra over bare by package (ms/step)")  # fmt: skip
    base = results["bare"][1]
    for name, (cpu, pkg, _fn) in results.items():
        extra = ", ".join(f"{p} {pkg.get(p, 0) - base.get(p, 0):+.2f}" for p in PACKAGES)
        print(f"{name:14s} {cpu:12.2f} " + " ".join(f"{pkg.get(p, 0.0):10.2f}" for p in PACKAGES)
              + f" {sum(pkg.values()):9.2f}  {extra if name != 'bare' else ''}")  # fmt: skip
    for name, (_wall, _pkg, per_fn) in results.items():
        ours = sorted(((v, k) for k, v in per_fn.items() if package_of(k[0]) in ("deepspeed", "cxrdist")), reverse=True)
        if name == "bare" or not ours:
            continue
        print(f"\n{name}: heaviest deepspeed / cxrdist functions (own time + the C calls they make, ms/step)")
        for v, (file, line, fn) in ours[: args.top]:
            print(f"  {v:7.3f}  {package_of(file):9s} {Path(file).name}:{line} {fn}")
    dist.shutdown()


if __name__ == "__main__":
    main()
