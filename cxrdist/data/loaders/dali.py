"""The DALI loader: JPEG decoding with nvjpeg (``device="mixed"``) when CUDA is available, else on the CPU.

The GPU/CPU choice is made by capability (``torch.cuda.is_available()``), never by a flag. Encoded bytes, crop
windows, flips and global indices enter the pipeline through ``fn.external_source`` from the shared sampler,
so this loader yields exactly the samples and geometry of the torch loader (see ``reader.py`` for why the
sampler, not ``fn.readers.webdataset``'s shuffle buffer, decides the order). Decoding, crop, resampling and
flip run in DALI; normalisation runs in torch on the batch's device like the other backend.

Only each sample's crop window is decoded (``decoders.image_slice``: libjpeg-turbo's / nvjpeg's region decode,
the same pixels as decoding the whole image and slicing it, about 14% less CPU per image here). One pipeline
serves every pass of the loader (built on the first, reset after each), and flip + HWC → CHW are one operator.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import torch

from cxrdist.data.format import DataError
from cxrdist.data.loaders.base import BaseLoader, LoaderSpec, decode_gray, draw_geometries

logger = logging.getLogger(__name__)


def dali_device_id(device: torch.device) -> int | None:
    """DALI's device_id: the CUDA index of ``device``; None for a CPU-only pipeline (DALI needs None there)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return device.index if device.index is not None else torch.cuda.current_device()
    return None


class DaliLoader(BaseLoader):
    """DALI backend (CPU decode here; nvjpeg on a GPU)."""

    def __init__(
        self,
        spec: LoaderSpec,
        *,
        world_size: int = 1,
        rank: int = 0,
        device: torch.device | None = None,
        num_threads: int = 2,
    ):
        if device is None:
            device = (
                torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
            )
        super().__init__(spec, world_size=world_size, rank=rank, device=device)
        self.num_threads = num_threads
        self.device_id = dali_device_id(self.device)
        self.nearest = any(op["op"] == "resize_nearest" for op in spec.ops)
        self._pipe, self._pipe_done, self._pass = None, False, 0
        self._feed = SimpleNamespace(it=iter(()))  # the pass being fed (its items), set before each pass

    def _source(self):
        """The external_source callable: the next batch of the pass in ``self._feed.it``, StopIteration at its end.

        It holds the reader, spec and feed, not the loader: no reference cycle keeps the pipeline after the loader.
        """
        feed, reader, spec, src = self._feed, self.reader, self.spec, self._src

        def next_batch():
            epoch, indices, positions = next(feed.it)  # StopIteration ends the DALI epoch
            ids = indices.tolist()
            jpegs = [np.frombuffer(reader.jpeg(i), dtype=np.uint8) for i in ids]
            geoms = draw_geometries(spec, src, reader, indices, positions, epoch)
            # Dense (batch, ...) arrays, one per output: DALI takes each as a whole batch (no per-sample arrays)
            table = np.array(geoms, dtype=np.int32).reshape(-1, 7)  # x0, y0, w, h, out, flip, nearest per sample
            anchors, shapes, flips = (np.ascontiguousarray(table[:, c]) for c in (slice(0, 2), slice(2, 4), 5))
            return jpegs, anchors, shapes, flips, indices.astype(np.int64).reshape(-1, 1)

        return next_batch

    def _build(self, source):
        from nvidia.dali import fn, pipeline_def, types  # optional heavy dependency: DALI only for loader=dali

        # Plain values, not self, inside the graph function: the pipeline must not keep the loader alive
        gpu, size = self.device_id is not None, [self.out_size, self.out_size]
        interp = types.INTERP_NN if self.nearest else types.INTERP_LINEAR
        dtype = types.UINT8 if self.spec.resample == "uint8" else types.FLOAT  # uint8: resampled in 8 bit

        @pipeline_def(
            batch_size=self.spec.batch_per_rank,
            num_threads=self.num_threads,
            device_id=self.device_id,
            prefetch_queue_depth=2,
            exec_dynamic=True,  # outputs allocated per iteration: _to_torch's CPU view relies on it
        )
        def pipe():
            jpegs, anchor, shape, flip, index = fn.external_source(
                source=source, num_outputs=5, batch=True, no_copy=False
            )
            images = fn.decoders.image_slice(
                jpegs,
                start=anchor,
                shape=shape,
                axis_names="WH",
                device="mixed" if gpu else "cpu",
                output_type=types.GRAY,
            )
            images = fn.resize(images, size=size, interp_type=interp, antialias=True, dtype=dtype)
            # flip + HWC → CHW in one pass (no mean/std given: CMN's (x - 0) / 1 leaves the values unchanged)
            images = fn.crop_mirror_normalize(images, mirror=flip, output_layout="CHW", dtype=dtype)
            return images, index

        p = pipe()
        p.build()
        return p

    def _pipeline(self, epoch: int, plan: list[tuple[np.ndarray, np.ndarray]]):
        """The loader's one pipeline, fed ``plan``: built once (a build costs about as much as decoding a few
        batches), reset after a pass that was read to its end, built anew after one left part-way (it still holds
        that pass's prefetched batches)."""
        items = ((epoch, indices, positions) for indices, positions in plan)
        if self._pipe is not None and self._pipe_done:
            self._feed.it = items
            self._pipe.reset()  # the previous pass ended (its source raised StopIteration): start the next one
        else:
            self._feed = SimpleNamespace(it=items)  # a fresh feed: nothing of a dropped pipeline can read it
            self._pipe = self._build(self._source())
        self._pipe_done = False
        return self._pipe

    def _image_batches(self, epoch: int, plan: list[tuple[np.ndarray, np.ndarray]]) -> Iterator[torch.Tensor]:
        if not plan:
            return
        pipe = self._pipeline(epoch, plan)
        self._pass += 1
        mine = self._pass
        for b, (indices, _) in enumerate(plan):
            if self._pass != mine:  # the pipeline now serves a newer pass
                raise RuntimeError("one loader iterated twice at once; finish or drop one iteration first")
            try:
                images, index = pipe.run()
            except StopIteration:
                raise DataError(f"DALI pipeline ended after {b} of {len(plan)} batches") from None
            except RuntimeError as e:
                raise self._explain(e, indices) from None
            got = (
                np.asarray(index.as_cpu().as_array()).reshape(-1)
                if self.device_id is not None
                else np.asarray(index.as_array()).reshape(-1)
            )
            if not np.array_equal(got, indices):  # the pipeline must return batches in feed order
                raise RuntimeError(f"DALI returned samples {got[:4]}..., expected {indices[:4]}...")
            self._pipe_done = b == len(plan) - 1  # all read: the source has raised StopIteration (prefetch)
            yield _to_torch(images, self.device, uint8=self.spec.resample == "uint8")

    def _explain(self, err: RuntimeError, indices: np.ndarray) -> Exception:
        """Turn a DALI decode error into one naming the shard and key (by re-decoding the batch in Python)."""
        for i in indices.tolist():
            try:
                decode_gray(self.reader.jpeg(i), self.reader.where(i))
            except DataError as e:
                return e
        return DataError(
            f"DALI failed on a batch of {self.reader.root / self.reader.split} "
            f"(keys {[self.reader.keys[i] for i in indices[:3]]}...): {err}"
        )


def _to_torch(tl, device: torch.device, uint8: bool = False) -> torch.Tensor:
    """A DALI TensorList (uniform shapes) → torch tensor on ``device`` (one device copy into a CUDA tensor on GPU;
    on the CPU a view of DALI's buffer)."""
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray  # optional heavy dependency: DALI (see above)

        t = tl.as_tensor()
        out = torch.empty(t.shape(), dtype=torch.uint8 if uint8 else torch.float32, device=device)
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    # A view of DALI's output, not a copy (as_array copies): the dynamic executor allocates each iteration's outputs
    # anew and the view keeps its buffer alive, so later runs never write into a batch still held
    return torch.from_numpy(np.asarray(tl.as_tensor()))
