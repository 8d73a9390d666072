"""The fast path of a training model, chosen by what the device can do: bf16 autocast, channels_last, compile.

``engine.precision`` (``auto``: bf16 autocast where the GPU has bf16 units, else fp32), ``engine.channels_last``
(``auto``: NHWC weights and inputs for a convolutional model on CUDA, where cuDNN's tensor-core convolutions want
them; on the CPU NCHW stays) and ``engine.compile`` (``false`` by default until measured on the target GPU;
``auto``: on CUDA when Triton is importable; ``true``: always, also on the CPU; a torch.compile mode name such as
``max-autotune`` implies ``true``). The model is changed in place (``Module.compile``, a forward pre-hook that makes
the input channels_last), so its ``state_dict`` keys and checkpoints are the same whatever was chosen.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)
SWITCHES = ("auto", "true", "false")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class FastPath:
    """What :func:`apply_fast_path` does to a model: autocast dtype (None: fp32), NHWC, torch.compile mode."""

    dtype: torch.dtype | None
    channels_last: bool
    compile_mode: str | None  # None: not compiled

    def describe(self) -> str:
        """One phrase for the run log, e.g. 'bf16 autocast, channels_last, compile (default)'."""
        parts = ["bf16 autocast" if self.dtype == torch.bfloat16 else "fp32"]
        parts.append("channels_last" if self.channels_last else "NCHW")
        parts.append(f"compile ({self.compile_mode})" if self.compile_mode else "eager")
        return ", ".join(parts)


def _switch(value: object, key: str) -> str:
    """A config switch as 'auto' | 'true' | 'false' (YAML gives booleans for true/false)."""
    text = str(value).lower()
    if text not in SWITCHES:
        more = f" or a mode ({', '.join(COMPILE_MODES)})" if key == "compile" else ""
        raise ValueError(f"engine.{key} {value!r}: choose auto, true or false{more}")
    return text


def bf16_capable(device: torch.device) -> bool:
    """True where bf16 autocast runs on bf16 units (CUDA devices that support it; never the CPU here)."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``engine.precision``: None for fp32.

    ``auto`` is bf16 where the device has bf16 units and fp32 elsewhere: DeepSpeed refuses fp16 on the CPU and bf16
    runs ~8× slower on CPUs without bf16 units; a pre-Ampere GPU would emulate it.
    """
    if precision == "auto":
        return torch.bfloat16 if bf16_capable(device) else None
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    raise ValueError(f"engine.precision {precision!r}: choose auto, fp32 or bf16 (fp16 is not supported)")


def has_conv2d(model: nn.Module) -> bool:
    """Whether the model convolves images (channels_last only helps 2-D convolutions)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def resolve_channels_last(setting: object, device: torch.device, model: nn.Module) -> bool:
    """``engine.channels_last``: ``auto`` is on for a convolutional model on CUDA."""
    s = _switch(setting, "channels_last")
    if s == "auto":
        return device.type == "cuda" and has_conv2d(model)
    return s == "true"


def resolve_compile(setting: object, device: torch.device) -> str | None:
    """``engine.compile``: the torch.compile mode to use, or None (eager)."""
    text = str(setting).lower()
    if text in COMPILE_MODES:
        return text
    s = _switch(setting, "compile")
    if s == "auto":
        return "default" if device.type == "cuda" and importlib.util.find_spec("triton") is not None else None
    return "default" if s == "true" else None


def resolve_fast_path(
    device: torch.device, model: nn.Module, *, precision: str, channels_last: object, compile: object
) -> FastPath:
    """The fast path of the ``engine.precision / channels_last / compile`` settings for ``model`` on ``device``."""
    return FastPath(
        dtype=resolve_precision(str(precision), device),
        channels_last=resolve_channels_last(channels_last, device, model),
        compile_mode=resolve_compile(compile, device),
    )


def _nhwc_input(_module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: a 4-D image input goes in as channels_last (a no-op copy when it already is)."""
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def apply_fast_path(model: nn.Module, fast: FastPath) -> nn.Module:
    """Apply ``fast`` to ``model`` in place (same object, same state_dict keys) and return it.

    Call after the model is on its device and before DDP/DeepSpeed wrap it. Autocast itself is the strategy's.
    """
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
        model.register_forward_pre_hook(_nhwc_input)
    if fast.compile_mode:
        model.compile(mode=fast.compile_mode)
    return model
