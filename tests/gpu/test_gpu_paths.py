"""The CUDA paths against the CPU ones (skipped without a GPU; run on a GPU machine with ``pytest -m gpu``).

The tiny net trains two steps on the same shards: on CUDA in fp32 it must match the CPU update; under bf16
autocast (``engine.precision=auto`` on CUDA) it must stay close to fp32 without being identical (autocast on);
DeepSpeed's bf16 mode likewise; the final evaluator's AUROC on CUDA equals the CPU's; diseasemask's affine
warp and its inverse agree on both devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrdist.run.local import run_local
from testkit.tiny import tiny_cfg, tiny_stages_with_eval

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
HERE = Path(__file__).parent
STEPS = ["method.stages.train.epochs=1", "method.stages.train.max_steps_per_epoch=2"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """last.pt, loaded without map_location: weights files hold CPU tensors wherever they were trained."""
    weights = torch.load(run_dir / "stages" / "00_train" / "last.pt", weights_only=True)["model"]
    assert all(v.device.type == "cpu" for v in weights.values())
    return weights


def _auroc(run_dir: Path) -> float:
    return json.loads((run_dir / "stages" / "01_eval" / "test" / "metrics.json").read_text())["auroc"]["mean"]


def _gpu_run(shards: Path, run_dir: Path, *extra: str) -> Path:
    run_local(tiny_cfg(shards, run_dir, *STEPS, *extra), nproc=1, stages_fn=tiny_stages_with_eval)
    return run_dir


def _cpu_run(shards: Path, run_dir: Path) -> Path:
    """The same run in a process that sees no GPU."""
    paths = [str(HERE.parents[1]), str(HERE.parents[0]), *sys.path]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(paths)}
    code = (
        "import sys; from testkit.tiny import tiny_cfg, tiny_stages_with_eval;"
        "from cxrdist.run.local import run_local; from pathlib import Path;"
        "run_local(tiny_cfg(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:]), nproc=1,"
        " stages_fn=tiny_stages_with_eval)"
    )
    cmd = [sys.executable, "-c", code, str(shards), str(run_dir), *STEPS]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return run_dir


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_cuda_fp32_and_bf16_match_cpu(shard_root: Path, tmp_path: Path):
    cpu = _cpu_run(shard_root, tmp_path / "cpu")
    fp32 = _gpu_run(shard_root, tmp_path / "fp32", "engine.precision=fp32")
    bf16 = _gpu_run(shard_root, tmp_path / "bf16")  # precision=auto: bf16 autocast on CUDA
    w_cpu, w_fp32, w_bf16 = _weights(cpu), _weights(fp32), _weights(bf16)
    assert _max_diff(w_cpu, w_fp32) < 1e-4
    assert 0 < _max_diff(w_fp32, w_bf16) < 1e-2
    assert all(torch.isfinite(v).all() for v in w_bf16.values())
    assert abs(_auroc(cpu) - _auroc(fp32)) < 1e-3


def test_deepspeed_bf16_on_cuda_matches_ddp(shard_root: Path, tmp_path: Path):
    pytest.importorskip("deepspeed")
    ddp = _weights(_gpu_run(shard_root, tmp_path / "ddp"))
    ds = _weights(_gpu_run(shard_root, tmp_path / "ds", "engine=deepspeed", "engine.zero_stage=1"))
    assert all(v.dtype == torch.float32 for v in ds.values())  # fp32 weights: bf16 is autocast only
    assert _max_diff(ddp, ds) < 1e-3


def test_affine_warp_cuda_matches_cpu():
    from cxrdist.models.alignment import warp, warp_maps_back

    g = torch.Generator().manual_seed(0)
    images, maps = torch.rand(4, 3, 64, 64, generator=g), torch.rand(4, 8, 8, 8, generator=g)
    params = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]) + 0.1 * torch.randn(4, 5, generator=g)  # (s_x, s_y, t_x, t_y, θ)
    for fn, x in ((warp, images), (warp_maps_back, maps)):
        torch.testing.assert_close(fn(x.cuda(), params.cuda()).cpu(), fn(x, params), atol=1e-5, rtol=1e-5)
