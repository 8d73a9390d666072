"""The engine's fast path on CUDA (skipped without a GPU; ``pytest -m gpu`` on a GPU machine): chosen by
capability, it trains, and benchmarks/gpu.py runs every section there, torch.compile included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrdist.dist import DistEnv
from cxrdist.engine.strategy import build_strategy
from testkit.tiny import TinyBNNet

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
REPO = Path(__file__).resolve().parents[2]


def test_auto_fast_path_trains_on_cuda():
    env = DistEnv()
    strategy = build_strategy("ddp", env, accum=1, micro_batch=8, precision="auto", channels_last="auto",
                              compile="true")  # fmt: skip
    torch.manual_seed(0)
    model = TinyBNNet()
    keys = list(model.state_dict())
    strategy.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1))
    want = "bf16 autocast" if torch.cuda.is_bf16_supported() else "fp32"
    assert strategy.fast.describe() == f"{want}, channels_last, compile (default)"
    x = torch.randn(8, 3, 32, 32, device=env.device)
    for _ in range(2):
        with strategy.autocast():
            loss = strategy.model(x).float().square().mean()
        assert strategy.backward(loss)
    assert list(strategy.unwrap().state_dict()) == keys
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_gpu_benchmark_runs_on_cuda(shard_root: Path):
    cmd = [sys.executable, "-m", "benchmarks.gpu", "--shards", str(shard_root), "--image-size", "32", "--batch", "8",
           "--steps", "2", "--warmup", "2", "--seconds", "1", "--compile", "true"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["device"] != "cpu" and "bf16+channels_last+compile" in out["model"]
    assert all("compile" in t["fast_path"] for t in out["trainer"].values())
