"""DDP and DeepSpeed behind one small interface: wrap, autocast, backward, step, save, load, unwrap.

Precision ``auto`` is bf16 autocast on a CUDA device with bf16 units and fp32 elsewhere; channels_last and
torch.compile are chosen the same way (:mod:`cxrdist.engine.accel`). Gradient accumulation: the loss of each
micro-batch is divided by the accumulation steps and the optimizer steps on the last one; DDP skips the gradient
all-reduce on the others (``no_sync``); DeepSpeed does the same through its own ``gradient_accumulation_steps``.

BatchNorm: with ``sync_bn`` and more than one rank, both strategies synchronise every BatchNorm across ranks before
wrapping (:mod:`cxrdist.engine.syncbn`); :meth:`Strategy.batchnorm_record` says over how many images it normalises.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrdist.dist import DistEnv
from cxrdist.engine.accel import FastPath, apply_fast_path, resolve_fast_path, resolve_precision
from cxrdist.engine.syncbn import batchnorm_images, convert_sync_batchnorm, count_batchnorms

logger = logging.getLogger(__name__)
STRATEGIES = ("ddp", "deepspeed")


class Strategy(ABC):
    """How a model is wrapped, stepped and checkpointed."""

    def __init__(
        self,
        env: DistEnv,
        *,
        accum: int,
        micro_batch: int,
        precision: str = "auto",
        grad_clip: float | None = None,
        zero_stage: int = 0,
        sync_bn: bool = False,
        channels_last: object = "false",
        compile: object = "false",
    ):
        self.env, self.accum, self.micro_batch = env, accum, micro_batch
        self.sync_bn, self.batchnorms, self.synced_bn = sync_bn, 0, False
        self.device = env.device
        self.dtype = resolve_precision(precision, self.device)
        self.grad_clip, self.zero_stage = grad_clip, zero_stage
        self._fast_cfg = {"precision": precision, "channels_last": channels_last, "compile": compile}
        self.fast: FastPath | None = None  # set by wrap (channels_last depends on the model)
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._micro = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast where configured; a no-op in fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _fast_path(self, model: nn.Module) -> nn.Module:
        """channels_last / compile of ``engine`` for this model (:mod:`cxrdist.engine.accel`), before wrapping."""
        self.fast = resolve_fast_path(self.device, model, **self._fast_cfg)
        return apply_fast_path(model, self.fast)

    @property
    def at_boundary(self) -> bool:
        """True when the next backward is the last micro-batch before an optimizer step."""
        return (self._micro + 1) % self.accum == 0

    def _sync_batchnorm(self, model: nn.Module) -> nn.Module:
        """Synchronise the model's BatchNorms across ranks when ``sync_bn`` and there is more than one rank."""
        self.batchnorms = count_batchnorms(model)
        self.synced_bn = self.sync_bn and self.env.world_size > 1 and self.batchnorms > 0
        return convert_sync_batchnorm(model, self.device)[0] if self.synced_bn else model

    def batchnorm_record(self, global_batch: int) -> dict[str, Any]:
        """For DONE.json and the run log: BatchNorm layers, whether synced, images each one normalises over."""
        if not self.batchnorms:
            return {"layers": 0}
        images = batchnorm_images(self.micro_batch, self.env.world_size, self.synced_bn)
        return {"layers": self.batchnorms, "synced": self.synced_bn, "images": images, "global_batch": global_batch}

    @abstractmethod
    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Move the model to the device and wrap it and its optimizer."""

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> bool:
        """Backward of one micro-batch; steps the optimizer at the accumulation boundary. Returns True if it did."""

    @abstractmethod
    def unwrap(self) -> nn.Module:
        """The plain module (for evaluation, CAMs, state dicts)."""

    @abstractmethod
    def save(self, ckpt_dir: Path) -> dict[str, Any]:
        """Save model and optimizer under ``ckpt_dir`` (collective: every rank calls it); return extra state."""

    @abstractmethod
    def load(self, ckpt_dir: Path, extra: dict[str, Any]) -> None:
        """Restore what :meth:`save` wrote."""


class DDPStrategy(Strategy):
    """torch DistributedDataParallel (or the bare module for one process)."""

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        model = self._fast_path(self._sync_batchnorm(model.to(self.device)))
        if self.env.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model, self.optimizer = model, optimizer

    def backward(self, loss: torch.Tensor) -> bool:
        boundary = self.at_boundary
        sync = contextlib.nullcontext() if boundary or self.env.world_size == 1 else self.model.no_sync()
        with sync:
            (loss / self.accum).backward()
        self._micro += 1
        if not boundary:
            return False
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def unwrap(self) -> nn.Module:
        return self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model

    def save(self, ckpt_dir: Path) -> dict[str, Any]:
        if self.env.is_main:
            torch.save(
                {"model": self.unwrap().state_dict(), "optimizer": self.optimizer.state_dict()},
                ckpt_dir / "model_optim.pt",
            )
        return {}

    def load(self, ckpt_dir: Path, extra: dict[str, Any]) -> None:
        state = torch.load(ckpt_dir / "model_optim.pt", map_location=self.device, weights_only=True)
        self.unwrap().load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


class DeepSpeedStrategy(Strategy):
    """DeepSpeed engine with a torch optimizer (no fused_adam JIT), ZeRO 0/1/2."""

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        import deepspeed  # optional heavy dependency: only for engine=deepspeed

        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"engine.zero_stage {self.zero_stage}: choose 0, 1 or 2")
        config = {
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": self.accum,
            "train_batch_size": self.micro_batch * self.accum * self.env.world_size,
            "zero_optimization": {"stage": self.zero_stage},
            # The recipes' torch SGD/Adam: ZeRO partitions any torch optimizer's state; DeepSpeed only lists its own.
            "zero_allow_untested_optimizer": True,
            # bf16 as torch autocast inside the engine, fp32 weights and fp32 gradient reduction: the same numerics
            # as DDP. (DeepSpeed's "bf16" section instead casts the weights to bf16 and turns an outer autocast off
            # inside its forward, so fp32 inputs meet bf16 weights: "Input type (float) and bias type (BFloat16)
            # should be the same", seen on an H100.) An empty safe-module list keeps every gradient's all-reduce
            # in fp32.
            "torch_autocast": {
                "enabled": self.dtype == torch.bfloat16,
                "dtype": "bfloat16",
                "lower_precision_safe_modules": [],
            },
            "gradient_clipping": float(self.grad_clip or 0.0),
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        _ensure_process_group(self.env)
        if self.env.world_size == 1 and self.zero_stage and self.env.is_main:
            # Measured (benchmarks/engine_overhead.py, ResNet-18 at 64 px, CPU): ZeRO-1/2 ran at 1.56x a DDP step
            logger.info("engine.zero_stage=%d on one rank partitions nothing: its per-step gradient copies and norm "
                        "are pure overhead here (engine=ddp trains the same)", self.zero_stage)  # fmt: skip
        model = self._fast_path(self._sync_batchnorm(model))
        engine, opt, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config, dist_init_required=False
        )
        self.model, self.optimizer, self._base_optimizer = engine, opt, optimizer

    def autocast(self) -> contextlib.AbstractContextManager:
        # The engine autocasts its forward itself (torch_autocast section); this covers the loss outside it.
        return super().autocast()

    def backward(self, loss: torch.Tensor) -> bool:
        boundary = self.model.is_gradient_accumulation_boundary()
        self.model.backward(loss)  # DeepSpeed scales by 1/gradient_accumulation_steps itself
        self.model.step()
        self._micro += 1
        return boundary

    def unwrap(self) -> nn.Module:
        return self.model.module

    def save(self, ckpt_dir: Path) -> dict[str, Any]:
        self.model.save_checkpoint(str(ckpt_dir / "deepspeed"), tag="state", save_latest=False)
        return {}

    def load(self, ckpt_dir: Path, extra: dict[str, Any]) -> None:
        path, _ = self.model.load_checkpoint(
            str(ckpt_dir / "deepspeed"), tag="state", load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise FileNotFoundError(f"{ckpt_dir / 'deepspeed'}: no DeepSpeed checkpoint")


def log_batchnorm(name: str, record: dict[str, Any], world: int, micro: int, accum: int) -> None:
    """The run log's line on BatchNorm (a warning when it normalises over fewer images than the recipe's batch)."""
    if not record["layers"]:
        return
    if world == 1:
        how = f"{micro} per micro-batch, one rank"
    else:
        how = f"{world} ranks × {micro} (synchronised)" if record["synced"] else f"{micro} per rank (not synchronised)"
    msg = "%s: each BatchNorm normalises over %d images (%s); the recipe's batch is %d"
    if record["images"] >= record["global_batch"]:
        logger.info(msg, name, record["images"], how, record["global_batch"])
        return
    why = f"gradient accumulation ({accum} micro-batches per step)" if accum > 1 else "engine.sync_bn=false"
    if accum > 1 and not record["synced"] and world > 1:
        why += " and engine.sync_bn=false"
    logger.warning(msg + ": fewer, because of %s; raise engine.max_batch_per_rank or use more ranks to match the "
                   "paper's BatchNorm batch", name, record["images"], how, record["global_batch"], why)  # fmt: skip


def _ensure_process_group(env: DistEnv) -> None:
    """DeepSpeed needs a process group and LOCAL_RANK even for one process: make a 1-rank group on loopback."""
    import torch.distributed as torch_dist

    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    if torch_dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch_dist.init_process_group(env.backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def build_strategy(name: str, env: DistEnv, **kwargs: Any) -> Strategy:
    """The strategy of ``engine.strategy``."""
    if name == "ddp":
        return DDPStrategy(env, **kwargs)
    if name == "deepspeed":
        return DeepSpeedStrategy(env, **kwargs)
    raise ValueError(f"unknown engine strategy {name!r}; choose one of {STRATEGIES}")
