"""The engine's fast path (engine/accel.py): chosen by capability, applied in place, checkpoints unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cxrdist.dist import DistEnv
from cxrdist.engine.accel import FastPath, apply_fast_path, resolve_fast_path
from cxrdist.engine.strategy import build_strategy

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 14))  # fmt: skip


def test_auto_on_cpu_is_fp32_nchw_eager():
    fast = resolve_fast_path(CPU, tiny_cnn(), precision="auto", channels_last="auto", compile="auto")
    assert fast == FastPath(dtype=None, channels_last=False, compile_mode=None)
    assert fast.describe() == "fp32, NCHW, eager"


def test_auto_channels_last_needs_cuda_and_a_conv():
    """On a CUDA device (resolution only: no tensor is made there) auto turns NHWC on for a CNN, not for an MLP."""
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 14))
    assert resolve_fast_path(CUDA, tiny_cnn(), precision="fp32", channels_last="auto", compile="false").channels_last
    assert not resolve_fast_path(CUDA, mlp, precision="fp32", channels_last="auto", compile="false").channels_last


@pytest.mark.parametrize(
    ("setting", "want"),
    [
        (True, "default"),
        ("true", "default"),
        (False, None),
        ("false", None),
        ("max-autotune", "max-autotune"),
        ("auto", None),
    ],  # fmt: skip
)
def test_compile_setting(setting, want):
    assert (
        resolve_fast_path(CPU, tiny_cnn(), precision="fp32", channels_last=False, compile=setting).compile_mode == want
    )


@pytest.mark.parametrize(("key", "value"), [("channels_last", "yes"), ("compile", "fastest"), ("precision", "fp16")])
def test_bad_setting_names_the_key(key, value):
    kw = {"precision": "auto", "channels_last": "auto", "compile": "false", key: value}
    with pytest.raises(ValueError, match=f"engine.{key}"):
        resolve_fast_path(CPU, tiny_cnn(), **kw)


def test_channels_last_same_outputs_and_keys():
    """NHWC weights + the input pre-hook: the same function and state_dict keys as the NCHW model."""
    ref, fast = tiny_cnn().eval(), tiny_cnn().eval()
    apply_fast_path(fast, FastPath(dtype=None, channels_last=True, compile_mode=None))
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
    assert list(fast.state_dict()) == list(ref.state_dict())


def test_compile_in_place_keeps_state_dict_keys():
    """Module.compile, not torch.compile's wrapper: checkpoints keep their keys (compiled lazily; not run here)."""
    model = tiny_cnn()
    keys = list(model.state_dict())
    assert apply_fast_path(model, FastPath(dtype=None, channels_last=False, compile_mode="default")) is model
    assert model._compiled_call_impl is not None and list(model.state_dict()) == keys


def test_strategy_applies_the_engine_settings():
    """DDPStrategy.wrap (one CPU rank) applies engine.channels_last=true and still trains."""
    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1)
    strategy = build_strategy("ddp", env, accum=1, micro_batch=2, precision="auto", channels_last="true")
    model = tiny_cnn()
    strategy.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert strategy.fast.describe() == "fp32, channels_last, eager"
    before = model[0].weight.detach().clone()
    loss = strategy.model(torch.randn(2, 3, 8, 8)).square().mean()
    assert strategy.backward(loss) and not torch.equal(before, model[0].weight)
