"""benchmarks/loader.py (d)/(e), loader_parts.py, feed.py and gpu.py stay working (tiny runs, seconds).

Their timings are printed, never asserted (speed targets live in the benchmarks, not in timed tests); what is
asserted is that each figure is produced and that the bare loop (d) does the loaders' work (same output).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _module(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m benchmarks.<name> ...`` from the repository root."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=True)


def test_bare_loop_and_decode_children(shard_root: Path):
    """(d) checks its output against the torch loader's path before timing; (k) keeps its batches; (e) times the
    decode alone."""
    common = ["--shards", str(shard_root), "--shard-size", "64", "--min-seconds", "0.05"]
    d = json.loads(_module("loader", "--child", "d", *common).stdout.strip().splitlines()[-1])
    e = json.loads(_module("loader", "--child", "e", *common).stdout.strip().splitlines()[-1])
    k = json.loads(_module("loader", "--child", "k", "--batch", "4", *common).stdout.strip().splitlines()[-1])
    assert d["images"] > 0 and e["images"] > 0 and k["images"] > 0 and d["cpu_seconds"] > 0
    assert 0 <= d["grey_diff"] <= 3.0 and d["shape"] == [3, 224, 224]


def test_feed_rate_benchmark(shard_root: Path):
    out = _module("feed", "--shards", str(shard_root), "--batch", "4", "--min-seconds", "0.05", "--repeat", "1")
    assert "(f) torch path" in out.stdout and "(g) DALI path" in out.stdout and "goal: >= 5000" in out.stdout
    assert "windows (geometries, one draw per batch)" in out.stdout


def test_loader_parts_benchmark(shard_root: Path):
    """benchmarks/loader_parts.py times every part of (d) and of both loaders, DALI's operators by difference."""
    out = _module("loader_parts", "--shards", str(shard_root), "--batch", "4", "--images", "8", "--repeat", "1").stdout
    rows = {line[:50].strip(): float(line[50:]) for line in out.splitlines() if line.startswith("  ")}
    assert {"(d) PIL decode", "loader: windows + flips (per batch)", "torch loader: float resample + flip",
            "DALI: resize uint8 alone", "loader: normalise (per batch)"} <= set(rows)  # fmt: skip
    assert all(v > 0 for k, v in rows.items() if not k.endswith("alone"))
    assert "(d)'s parts add up to" in out and "DALI's own CPU operator" in out


def test_gpu_benchmark_tiny_cpu_mode(shard_root: Path):
    """benchmarks/gpu.py --tiny runs every section on the CPU (compile left out); the figures are not checked."""
    out = json.loads(_module("gpu", "--tiny", "--shards", str(shard_root)).stdout.strip().splitlines()[-1])
    assert out["decode"] > 0 and set(out["loader"]) == {"dali", "torch"}
    assert set(out["model"]) == {"fp32", "bf16", "bf16+channels_last"}
    assert {b: t["fast_path"] for b, t in out["trainer"].items()} == {"dali": "fp32, NCHW, eager",
                                                                       "torch": "fp32, NCHW, eager"}  # fmt: skip
    assert all(t["vs_model"] > 0 for t in out["trainer"].values())


def test_engine_profile_books_time_by_package():
    """benchmarks/engine_profile.py on a tiny CNN: every variant profiled, DeepSpeed's own time booked to it."""
    out = _module("engine_profile", "--image-size", "16", "--batch", "2", "--steps", "2", "--warmup", "1",
                  "--variants", "ddp", "deepspeed-z1").stdout  # fmt: skip
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["bare"], ["ddp"],
            ["deepspeed-z1"])}  # fmt: skip
    assert set(rows) == {"bare", "ddp", "deepspeed-z1"}
    assert float(rows["deepspeed-z1"][2]) > 0 and float(rows["ddp"][2]) == 0  # the deepspeed column
