"""The torch loader: shards read by index through their DALI indexes, decoded with PIL in DataLoader workers.

It is the reference implementation the DALI loader is tested against and the loader for machines without
DALI. The order of samples comes from the shared sampler, never from worker scheduling: a batch sampler hands
each worker whole batches and the DataLoader returns them in order, so the result is the same for any
``workers``. Samples are read at the byte offsets the ``.idx`` files give (the webdataset sample layout,
random access instead of a stream; see ``reader.py`` for why).

One DataLoader serves every epoch and evaluation pass of a loader, with persistent workers: what a worker
decodes is named entirely by the item it is handed (epoch, indices, positions), so the workers need no state
of the sampler, and forking them once instead of every epoch saves their start-up (copy-on-write page faults
of the parent's memory, the tar files reopened). A worker stacks its batch straight into shared memory
(``default_collate``), so handing it to the main process copies nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from cxrdist.data.format import DataError
from cxrdist.data.loaders.base import BaseLoader, LoaderSpec, decode_gray, draw_geometries
from cxrdist.data.reader import ShardReader
from cxrdist.data.transforms import SampleGeometry, apply_geometry_pil, apply_geometry_torch

# What a worker is handed: (epoch, global indices, positions in the epoch) of one batch
Item = tuple[int, np.ndarray, np.ndarray]


class _BatchDataset(Dataset):
    """Item = one whole batch, so a worker decodes a batch and order is fixed by the sampler.

    It holds the reader and the spec, not the loader: no reference cycle keeps the workers alive after the loader.
    """

    def __init__(self, reader: ShardReader, spec: LoaderSpec, src: tuple[int, int] | None):
        self.reader, self.spec, self.src = reader, spec, src

    def __getitem__(self, item: Item) -> torch.Tensor:
        epoch, indices, positions = item
        reader, out = self.reader, []
        geoms = draw_geometries(self.spec, self.src, reader, indices, positions, epoch)
        for i, g in zip(indices.tolist(), geoms):
            if self.spec.resample == "uint8":
                out.append(torch.from_numpy(_pil_8bit(reader, i, g))[None])
            else:
                out.append(apply_geometry_torch(decode_gray(reader.jpeg(i), reader.where(i)), g))
        return default_collate(out)  # torch.stack, into shared memory when in a worker


def _pil_8bit(reader: ShardReader, index: int, g: SampleGeometry) -> np.ndarray:
    """``resample="uint8"``: the sample through :func:`apply_geometry_pil`; an undecodable one names its key."""
    try:
        return apply_geometry_pil(reader.jpeg(index), g)
    except DataError:
        raise
    except Exception as e:  # PIL raises many types for corrupt data (as decode_gray)
        raise DataError(f"{reader.where(index)}: undecodable JPEG: {type(e).__name__}: {e}") from None


class _Feed:
    """The DataLoader's sampler: the items of the pass being read (set before each ``iter``, in the main process)."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class TorchLoader(BaseLoader):
    """PIL + torch DataLoader backend."""

    _dl: DataLoader | None = None
    _pass = 0  # which pass (epoch or evaluation) the DataLoader is reading: one at a time

    def _dataloader(self) -> DataLoader:
        if self._dl is None:
            workers = self.spec.workers
            self._feed = _Feed()
            self._dl = DataLoader(
                _BatchDataset(self.reader, self.spec, self._src),
                batch_size=None,
                sampler=self._feed,
                num_workers=workers,
                pin_memory=self.device.type == "cuda",
                prefetch_factor=2 if workers else None,
                persistent_workers=workers > 0,
                multiprocessing_context="fork" if workers else None,
                worker_init_fn=_one_thread,
            )
        return self._dl

    def _image_batches(self, epoch: int, plan: list[tuple[np.ndarray, np.ndarray]]) -> Iterator[torch.Tensor]:
        dl = self._dataloader()
        self._pass += 1
        mine = self._pass
        self._feed.items = [(epoch, indices, positions) for indices, positions in plan]
        # iter() of a persistent DataLoader resets its one iterator: a pass left part-way (a break, max_steps)
        # has its prefetched batches drained by the reset, so the new pass starts clean
        it = iter(dl)
        while True:
            if self._pass != mine:  # checked before next(): the shared iterator now serves the newer pass
                raise RuntimeError("one loader iterated twice at once; finish or drop one iteration first")
            try:
                images = next(it)
            except StopIteration:
                return
            yield images


def _one_thread(_: int) -> None:
    # Each worker decodes one batch at a time; intra-op threads would only fight the trainer for cores.
    torch.set_num_threads(1)
