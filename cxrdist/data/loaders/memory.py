"""A training loader over an in-memory set (e.g. the JSRT/SCR segmentation set): the shards' sampler, any batches.

It follows :class:`~cxrdist.data.sampler.TrainSampler` exactly as the shard loaders do (per-rank micro-batches of a
(seed, epoch) permutation, accumulation, ``max_steps``, resumable through ``state_dict``), so the trainer resumes it
mid-epoch like any loader. ``make_batch(indices, positions, epoch)`` builds one batch (positions: the samples'
places in the epoch's permutation, for per-sample augmentation seeds); the loader adds ``index``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from cxrdist.data.sampler import TrainSampler


class MemoryLoader:
    """Training batches of ``base`` (item indices of the in-memory set) made by ``make_batch``."""

    def __init__(
        self,
        base: np.ndarray,
        make_batch: Callable[[np.ndarray, np.ndarray, int], dict[str, Any]],
        *,
        batch_per_rank: int,
        accum: int = 1,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        max_steps: int | None = None,
    ):
        self.make_batch = make_batch
        self.sampler = TrainSampler(
            np.asarray(base),
            world_size=world_size,
            rank=rank,
            batch_per_rank=batch_per_rank,
            accum=accum,
            seed=seed,
            max_steps=max_steps,
        )

    def __len__(self) -> int:
        return self.sampler.steps_per_epoch

    @property
    def epoch(self) -> int:
        """The current epoch."""
        return self.sampler.state.epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.sampler.state.epoch
        for indices, positions in self.sampler.remaining_batches():
            batch = self.make_batch(indices, positions, epoch)
            self.sampler.advance()  # counted when handed out: a checkpoint after this step includes it
            yield batch | {"index": torch.from_numpy(np.asarray(indices, dtype=np.int64))}

    def state_dict(self) -> dict[str, int]:
        """Position (epoch, samples consumed, seed)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position."""
        if int(state["seed"]) != self.sampler.state.seed:
            seed = self.sampler.state.seed
            raise ValueError(f"loader state was saved with seed {state['seed']}, this run uses {seed}")
        self.sampler.load_state_dict(state)
