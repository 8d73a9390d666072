"""The torch loader: shards read by index through their DALI indexes, decoded with PIL in DataLoader workers.

It is the reference implementation the DALI loader is tested against and the loader for machines without
DALI. The order of samples comes from the shared sampler, never from worker scheduling: a batch sampler hands
each worker whole batches and the DataLoader returns them in order, so the result is the same for any
``workers``. Samples are read at the byte offsets the ``.idx`` files give (the webdataset sample layout,
random access instead of a stream; see ``reader.py`` for why).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxrdist.data.loaders.base import BaseLoader, decode_gray
from cxrdist.data.transforms import apply_geometry_torch


class _BatchDataset(Dataset):
    """Item = one whole batch, so a worker decodes a batch and order is fixed by the sampler."""

    def __init__(self, loader: TorchLoader, epoch: int, plan: list[tuple[np.ndarray, np.ndarray]]):
        self.loader, self.epoch, self.plan = loader, epoch, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, b: int) -> torch.Tensor:
        indices, positions = self.plan[b]
        reader = self.loader.reader
        out = []
        for i, p in zip(indices.tolist(), positions.tolist()):
            img = decode_gray(reader.jpeg(i), reader.where(i))
            out.append(apply_geometry_torch(img, self.loader.geometry(i, p, self.epoch)))
        return torch.stack(out)


class TorchLoader(BaseLoader):
    """PIL + torch DataLoader backend."""

    def _image_batches(self, epoch: int, plan: list[tuple[np.ndarray, np.ndarray]]) -> Iterator[torch.Tensor]:
        workers = self.spec.workers
        dl = DataLoader(
            _BatchDataset(self, epoch, plan),
            batch_size=None,
            shuffle=False,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=2 if workers else None,
            persistent_workers=False,
            multiprocessing_context="fork" if workers else None,
            worker_init_fn=_one_thread,
        )
        yield from dl


def _one_thread(_: int) -> None:
    # Each worker decodes one batch at a time; intra-op threads would only fight the trainer for cores.
    torch.set_num_threads(1)
