"""The torch loader: shards read by index through their DALI indexes, decoded with PIL in DataLoader workers.

It is the reference implementation the DALI loader is tested against and the loader for machines without
DALI. The order of samples comes from the shared sampler, never from worker scheduling: a batch sampler hands
each worker whole batches and the DataLoader returns them in order, so the result is the same for any
``workers``. Samples are read at the byte offsets the ``.idx`` files give (the webdataset sample layout,
random access instead of a stream; see ``reader.py`` for why).

One DataLoader serves every epoch and evaluation pass of a loader, with persistent workers: what a worker
decodes is named entirely by the item it is handed (epoch, indices, positions, slot), so the workers need no
state of the sampler, and forking them once instead of every epoch saves their start-up (copy-on-write page
faults of the parent's memory, the tar files reopened).

A worker writes its batch into a **slot** of a pool of batch buffers in shared memory, made once before the
workers fork, and hands back only the slot's number. The default hand-over (``default_collate`` into fresh
shared memory) cost more than a third of the loader's CPU time per image here: a new shared-memory file per
batch, its pages faulted in by the worker and again by the main process, and its file descriptor passed
through a socket. Slot ``k mod n`` holds the pass's ``k``-th batch; a DataLoader has at most
``prefetch_factor × workers`` batches sent and not yet returned, so with one slot more than that a slot is
written again only after its batch was handed over and normalised into a new tensor (``BaseLoader._join``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxrdist.data.format import DataError
from cxrdist.data.loaders.base import BaseLoader, LoaderSpec, decode_gray, draw_geometries
from cxrdist.data.reader import ShardReader
from cxrdist.data.transforms import SampleGeometry, apply_geometry_pil, apply_geometry_torch

PREFETCH = 2  # batches in flight per worker (the DataLoader's prefetch_factor)
# What a worker is handed: (epoch, global indices, positions in the epoch, slot) of one batch
Item = tuple[int, np.ndarray, np.ndarray, int]


class _BatchDataset(Dataset):
    """Item = one whole batch, written into its slot of ``pool``; returns (slot, batch size).

    It holds the reader, the spec and the pool, not the loader: no reference cycle keeps the workers alive after
    the loader.
    """

    def __init__(self, reader: ShardReader, spec: LoaderSpec, src: tuple[int, int] | None, pool: torch.Tensor):
        self.reader, self.spec, self.src, self.pool = reader, spec, src, pool

    def __getitem__(self, item: Item) -> tuple[int, int]:
        epoch, indices, positions, slot = item
        reader, out = self.reader, self.pool[slot].numpy()
        side = out.shape[-1]
        geoms = draw_geometries(self.spec, self.src, reader, indices, positions, epoch)
        for k, (i, g) in enumerate(zip(indices.tolist(), geoms)):
            if g.out != side:
                raise DataError(f"{reader.where(i)}: transform gives {g.out}², the split's first sample {side}²")
            if self.spec.resample == "uint8":
                _pil_8bit(reader, i, g, out[k, 0])
            else:
                apply_geometry_torch(decode_gray(reader.jpeg(i), reader.where(i)), g, out[k])
        return slot, len(indices)


def _pil_8bit(reader: ShardReader, index: int, g: SampleGeometry, out: np.ndarray) -> np.ndarray:
    """``resample="uint8"``: the sample through :func:`apply_geometry_pil` into ``out``; an undecodable one names
    its key."""
    try:
        return apply_geometry_pil(reader.jpeg(index), g, out)
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
            self._pool = self._make_pool(PREFETCH * workers + 1)
            self._dl = DataLoader(
                _BatchDataset(self.reader, self.spec, self._src, self._pool),
                batch_size=None,
                sampler=self._feed,
                num_workers=workers,
                prefetch_factor=PREFETCH if workers else None,
                persistent_workers=workers > 0,
                multiprocessing_context="fork" if workers else None,
                worker_init_fn=_one_thread,
            )
        return self._dl

    def _make_pool(self, slots: int) -> torch.Tensor:
        """(slots, batch, 1, side, side) batch buffers, in shared memory when workers (forked later) write them."""
        side = max(self.out_size, 1)  # an empty split still gets a (never written) pool
        dtype = torch.uint8 if self.spec.resample == "uint8" else torch.float32
        pool = torch.empty((slots, self.spec.batch_per_rank, 1, side, side), dtype=dtype)
        if not self.spec.workers:
            return pool
        try:
            return pool.share_memory_()
        except RuntimeError as e:  # /dev/shm too small (containers often give 64 MiB)
            mib = pool.numel() * pool.element_size() / 2**20
            raise RuntimeError(
                f"loader ({self.spec.split}): {mib:.0f} MiB of shared memory for {slots} batch slots of "
                f"{self.spec.workers} workers could not be had ({e}); lower loader.workers or the batch size, or "
                "give the job a larger /dev/shm"
            ) from None

    def _image_batches(self, epoch: int, plan: list[tuple[np.ndarray, np.ndarray]]) -> Iterator[torch.Tensor]:
        dl = self._dataloader()
        self._pass += 1
        mine, slots = self._pass, len(self._pool)
        self._feed.items = [(epoch, idx, pos, k % slots) for k, (idx, pos) in enumerate(plan)]
        # iter() of a persistent DataLoader resets its one iterator: a pass left part-way (a break, max_steps)
        # has its prefetched batches drained by the reset (their slots written before it returns), so the new
        # pass starts clean
        it = iter(dl)
        while True:
            if self._pass != mine:  # checked before next(): the shared iterator now serves the newer pass
                raise RuntimeError("one loader iterated twice at once; finish or drop one iteration first")
            try:
                slot, n = next(it)
            except StopIteration:
                return
            images = self._pool[slot, :n]
            # to a GPU through pinned memory (torch's caching host allocator), as DataLoader's pin_memory did
            yield images.pin_memory() if self.device.type == "cuda" else images


def _one_thread(_: int) -> None:
    # Each worker decodes one batch at a time; intra-op threads would only fight the trainer for cores.
    torch.set_num_threads(1)
