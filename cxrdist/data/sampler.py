"""Which sample each rank reads at each step: a pure function of (seed, epoch, world size, rank).

Training epochs. The epoch's base list (all indices, a restriction to a key list, or all indices plus a key
list's indices again for over-sampling) is permuted by an RNG seeded with (seed, epoch). Loader step k covers
the global slice ``perm[k*W*m : (k+1)*W*m]`` (W ranks, m samples per rank per step) and rank r takes
``perm[k*W*m + r*m : k*W*m + (r+1)*m]``. Drop policy: an epoch has ``floor(len(perm) / G) * A`` steps, where G
is the global batch (W*m*A, A = gradient-accumulation steps), so every rank takes the same number of steps, each
sample is used at most once, and an epoch ends on an optimizer step; the ``len(perm) mod G`` samples at the
end of the permutation (different ones each epoch) are dropped and counted.

Optimizer steps. Optimizer step j covers loader steps ``j*A .. j*A + A - 1`` of every rank, i.e. exactly
``perm[j*G : (j+1)*G]`` whatever W and A are (:meth:`TrainSampler.step_indices`): a loss that depends on the whole
batch (the batch-weighted BCE's P and N) can be computed over the optimizer step's samples on every rank and
micro-batch without any communication.

Resume. The state is (seed, epoch, samples consumed). Because an optimizer step always consumes the same G
permuted samples whatever W is, a job resumed with a different world size (same global batch) continues with
exactly the samples not yet seen, in the same global-batch groups; a position that is not a multiple of the
new W*m is an error.

Evaluation passes: every index of the split once, rank r taking indices r, r+W, r+2W, ... in batches of m; no
padding, so ranks may take different numbers of batches (evaluation has no per-step collectives).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SamplerState:
    """The resumable position of a training loader."""

    seed: int
    epoch: int = 0
    consumed: int = 0  # samples of this epoch's permutation consumed by all ranks together

    def to_dict(self) -> dict[str, int]:
        """Plain dict for checkpoints."""
        return {"seed": self.seed, "epoch": self.epoch, "consumed": self.consumed}


class TrainSampler:
    """Per-rank index batches for training epochs (see module docstring)."""

    def __init__(
        self,
        base: np.ndarray,
        *,
        world_size: int,
        rank: int,
        batch_per_rank: int,
        accum: int = 1,
        seed: int = 0,
        max_steps: int | None = None,
    ):
        if len(base) == 0:
            raise ValueError("training set is empty")
        if not 0 <= rank < world_size or batch_per_rank < 1 or accum < 1:
            raise ValueError(
                f"bad sampler geometry: rank {rank}, world {world_size}, batch {batch_per_rank}, accum {accum}"
            )
        self.base = np.asarray(base, dtype=np.int64)
        self.world_size, self.rank, self.m, self.accum = world_size, rank, batch_per_rank, accum
        self.state = SamplerState(seed=seed)
        self.max_steps = max_steps  # cap on optimizer steps per epoch (smoke runs); None = whole epoch
        step = world_size * batch_per_rank
        self.global_batch = step * accum
        if len(self.base) < self.global_batch:
            raise ValueError(
                f"training set has {len(self.base)} samples, fewer than one global batch "
                f"({self.global_batch}); lower the global batch"
            )

    @property
    def steps_per_epoch(self) -> int:
        """Loader steps (micro-batches) every rank takes per epoch."""
        steps = len(self.base) // self.global_batch
        if self.max_steps is not None:
            steps = min(steps, self.max_steps)
        return steps * self.accum

    @property
    def dropped_per_epoch(self) -> int:
        """Samples of each epoch's permutation that no rank reads."""
        return len(self.base) - self.steps_per_epoch * self.world_size * self.m

    def permutation(self, epoch: int) -> np.ndarray:
        """The epoch's order of the base list (a pure function of seed and epoch; the last one is cached)."""
        key = (self.state.seed, epoch)
        if getattr(self, "_perm_key", None) != key:
            rng = np.random.default_rng([self.state.seed, epoch])
            self._perm, self._perm_key = self.base[rng.permutation(len(self.base))], key
        return self._perm

    def step_indices(self, epoch: int, position: int) -> np.ndarray:
        """Every sample of the optimizer step that the sample at ``position`` of the epoch belongs to (all ranks,
        all accumulation micro-batches: ``global_batch`` indices)."""
        start = position // self.global_batch * self.global_batch
        return self.permutation(epoch)[start : start + self.global_batch]

    def remaining_batches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """This rank's remaining (indices, positions) batches of the current epoch, from the current position."""
        step_size = self.world_size * self.m
        if self.state.consumed % step_size:
            raise ValueError(
                f"resume position {self.state.consumed} is not a multiple of world_size × batch = "
                f"{step_size}; resume with a world size that divides the global batch"
            )
        perm = self.permutation(self.state.epoch)
        out = []
        for k in range(self.state.consumed // step_size, self.steps_per_epoch):
            pos = np.arange(k * step_size + self.rank * self.m, k * step_size + (self.rank + 1) * self.m)
            out.append((perm[pos], pos))
        return out

    def advance(self, steps: int = 1) -> None:
        """Record that every rank consumed ``steps`` more loader steps; roll over to the next epoch at its end."""
        self.state.consumed += steps * self.world_size * self.m
        if self.state.consumed >= self.steps_per_epoch * self.world_size * self.m:
            self.state.epoch += 1
            self.state.consumed = 0

    def state_dict(self) -> dict[str, int]:
        """Checkpointable position."""
        return self.state.to_dict()

    def load_state_dict(self, d: dict[str, int]) -> None:
        """Restore a position (possibly saved at another world size)."""
        self.state = SamplerState(seed=int(d["seed"]), epoch=int(d["epoch"]), consumed=int(d["consumed"]))


def eval_batches(num_samples: int, *, world_size: int, rank: int, batch: int) -> list[np.ndarray]:
    """This rank's index batches of an evaluation pass: every index exactly once across ranks."""
    mine = np.arange(rank, num_samples, world_size, dtype=np.int64)
    return [mine[i : i + batch] for i in range(0, len(mine), batch)]


def base_indices(
    num_samples: int, restrict: np.ndarray | None = None, oversample: np.ndarray | None = None
) -> np.ndarray:
    """A training epoch's base list: all indices (or only ``restrict``), plus ``oversample`` once more."""
    base = np.arange(num_samples, dtype=np.int64) if restrict is None else np.unique(restrict)
    if oversample is not None and len(oversample):
        if restrict is not None and not np.isin(oversample, base).all():
            raise ValueError("over-sampled keys must be part of the restricted set")
        base = np.concatenate([base, np.unique(oversample)])
    return base
