"""BatchNorm over the global batch across ranks (``engine.sync_bn``), on GPUs and on CPUs.

The papers' BatchNorm normalised over their whole batch on one GPU; split over W ranks, a plain BatchNorm
normalises over the per-rank micro-batch only (a paper's batch of 8 on 8 GPUs: one image). With ``sync_bn`` every
BatchNorm of a model trained by more than one rank is replaced before wrapping:

- CUDA (NCCL): ``torch.nn.SyncBatchNorm``.
- anything else (CPU tensors with gloo): :class:`CPUSyncBatchNorm`. torch's SyncBatchNorm refuses CPU tensors
  ("SyncBatchNorm expected input tensor to be on GPU", torch 2.14) and its kernels (``batch_norm_stats`` ...) have no
  CPU implementation, so this module computes the same statistics with one autograd-aware all-reduce.

Both keep BatchNorm's parameter and buffer names, so state dicts, checkpoints and weights files are unchanged, and
a model built later with plain BatchNorm loads them. In eval mode (and with one rank) they are plain BatchNorm.
Accumulation cannot be synchronised: a BatchNorm normalises over ranks × micro-batch images
(:func:`batchnorm_images`), which the trainer records and warns about when it is less than the recipe's batch.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.modules.batchnorm import _BatchNorm


def _world() -> int:
    return torch_dist.get_world_size() if torch_dist.is_available() and torch_dist.is_initialized() else 1


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are the whole world's batch (any backend, any device).

    Mean and biased variance come from one all-reduce of the per-channel sums of x and x² and the count, in
    float64 (torch's CPU BatchNorm also accumulates in double; in double, E[x²] − E[x]² loses nothing that matters
    at activation scales, and one all-reduce instead of two halves the synchronisation points per layer); the
    running variance gets the unbiased estimate, as ``F.batch_norm``. The all-reduce is an autograd function whose
    backward all-reduces the gradient, so the input gradients are those of one BatchNorm over the whole batch.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        """Normalise over every rank's batch in training, with the running statistics otherwise."""
        if not self.training or _world() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as _BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xd, c = x.double(), x.shape[1]
        total = all_reduce(torch.cat([xd.sum(dims), xd.square().sum(dims), xd.new_tensor([x.numel() / c])]))
        count = total[-1]
        if float(count) <= 1:
            raise ValueError(f"expected more than 1 value per channel when training, got {int(count)} over all ranks")
        mean = total[:c] / count
        var = (total[c : 2 * c] / count - mean.square()).clamp_min(0)
        centered = xd - mean.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                unbiased = var.detach() * (count / (count - 1))
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        out = (centered * (var + self.eps).rsqrt().view(shape)).to(x.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def _convert(module: nn.Module, cls: type[_BatchNorm]) -> tuple[nn.Module, int]:
    """Replace every non-synced BatchNorm under ``module`` by ``cls`` (same parameters and buffers)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, nn.SyncBatchNorm | CPUSyncBatchNorm):
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        with torch.no_grad():
            if module.affine:
                new.weight, new.bias = module.weight, module.bias
            if module.track_running_stats:
                new.running_mean, new.running_var = module.running_mean, module.running_var
                new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new, 1
    count = 0
    for name, child in module.named_children():
        new_child, n = _convert(child, cls)
        if new_child is not child:
            setattr(module, name, new_child)
        count += n
    return module, count


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> tuple[nn.Module, int]:
    """Every BatchNorm of ``model`` synchronised across ranks: ``(model, number of BatchNorm layers)``.

    torch's SyncBatchNorm on CUDA, :class:`CPUSyncBatchNorm` elsewhere (see the module docstring).
    """
    if device.type == "cuda":
        count = sum(isinstance(m, _BatchNorm) for m in model.modules())
        return nn.SyncBatchNorm.convert_sync_batchnorm(model), count
    return _convert(model, CPUSyncBatchNorm)


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm layers of ``model`` (plain or synchronised)."""
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def batchnorm_images(micro_batch: int, world_size: int, synced: bool) -> int:
    """How many images one BatchNorm normalises over in a training forward: ranks × micro-batch when synced."""
    return micro_batch * (world_size if synced else 1)
