"""The loader interface both backends share (``factory.py`` picks one: ``loader=dali|torch``).

A loader yields dicts: ``image`` (B, C, H, W) float on the loader's device, normalised for the backbone;
``labels`` (B, 14) float; ``index`` (B,) int64 global index in the split; plus one entry per joined sidecar.
Training batches also carry ``step_label_counts`` (2,) float64: the number of 1s (P) and 0s (N) in the label matrix
of the whole optimizer step the batch belongs to (every rank's micro-batches of it), from the labels the reader
loads on open, so a batch-weighted loss sees the global batch's counts at any world size and accumulation.
Training loaders follow :class:`~cxrdist.data.sampler.TrainSampler` (exactly resumable through
``state_dict``); evaluation loaders yield every sample of the split exactly once across ranks.
"""

from __future__ import annotations

import io
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cxrdist.data.format import DataError, read_json
from cxrdist.data.reader import ShardReader
from cxrdist.data.sampler import TrainSampler, base_indices, eval_batches
from cxrdist.data.sidecar import Sidecar, read_key_list
from cxrdist.data.transforms import (
    SampleGeometry,
    map_plane,
    normalize_batch,
    sample_geometries,
    sample_uniforms,
    uniform_columns,
    validate_ops,
)

logger = logging.getLogger(__name__)
RESAMPLE = ("float", "uint8")  # LoaderSpec.resample


def decode_gray(data: bytes, where: str) -> torch.Tensor:
    """JPEG bytes → (H, W) uint8 tensor; error naming the shard and key if undecodable."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.array(im if im.mode == "L" else im.convert("L"))  # writable: torch.from_numpy warns otherwise
    except Exception as e:  # PIL raises many types for corrupt data
        raise DataError(f"{where}: undecodable JPEG: {type(e).__name__}: {e}") from None
    return torch.from_numpy(arr)


def draw_geometries(
    spec: LoaderSpec,
    src: tuple[int, int] | None,
    reader: ShardReader,
    indices: np.ndarray,
    positions: np.ndarray,
    epoch: int,
) -> list[SampleGeometry]:
    """The crops/flips of samples ``indices`` at ``positions`` of ``epoch`` (random only for training), drawn for the
    whole batch at once; ``src`` is the stored size of every image (None: read from each sample's metadata).

    Sample i's draw is a function of (seed, epoch, positions[i]) alone (:func:`sample_uniforms`), whatever batch,
    rank or worker draws it; and of the arguments alone, so a DataLoader worker can draw it without the loader.
    """
    indices = np.asarray(indices).reshape(-1)
    if src is not None:
        sizes = np.broadcast_to(np.asarray(src, dtype=np.int64), (len(indices), 2))
    else:
        sizes = np.array([reader.meta(int(i))["size"] for i in indices], dtype=np.int64).reshape(-1, 2)
    u = sample_uniforms(spec.seed, epoch, positions, uniform_columns(spec.ops)) if spec.train else None
    return sample_geometries(spec.ops, sizes, u)


def draw_geometry(
    spec: LoaderSpec, src: tuple[int, int] | None, reader: ShardReader, index: int, position: int, epoch: int
) -> SampleGeometry:
    """One sample's :func:`draw_geometries` (the same window as when drawn in any batch)."""
    return draw_geometries(spec, src, reader, np.array([index]), np.array([position]), epoch)[0]


@dataclass
class LoaderSpec:
    """What a stage asks of a loader (built from the config by the engine)."""

    root: str
    split: str
    train: bool
    batch_per_rank: int
    ops: list[dict[str, Any]]
    normalize: str = "imagenet"
    channels: int = 3
    accum: int = 1
    seed: int = 0
    workers: int = 2
    restrict_keys: str | None = None  # key-list file: only these samples
    oversample_keys: str | None = None  # key-list file: these samples a second time per epoch
    # name -> sidecar path; "{split}" in a path is replaced by this spec's split, so one stage extras dict can
    # name per-split sidecars for its train, val and eval loaders
    sidecars: dict[str, str] = field(default_factory=dict)
    expected_config_hash: str | None = None
    max_steps: int | None = None  # training: cap on optimizer steps per epoch (smoke runs)
    # "float": the crop is resampled in float32 (exact, the default); "uint8": in 8 bit (PIL in the torch loader,
    # DALI's uint8 resize), up to ~1 grey level from float, and the batch stays uint8 until it is on the device
    resample: str = "float"


class BaseLoader(ABC):
    """Sampling, joins and state; subclasses turn (indices, geometries) into image batches."""

    def __init__(self, spec: LoaderSpec, *, world_size: int = 1, rank: int = 0, device: torch.device | None = None):
        validate_ops(spec.ops, where=f"transform ({spec.split})")
        if spec.resample not in RESAMPLE:
            raise ValueError(f"loader resample {spec.resample!r}: choose one of {', '.join(RESAMPLE)}")
        self.spec, self.world_size, self.rank = spec, world_size, rank
        self.device = device or torch.device("cpu")
        self.reader = ShardReader(spec.root, spec.split, spec.expected_config_hash)
        self.sidecars = {
            n: Sidecar(str(p).replace("{split}", spec.split), self.reader.keys) for n, p in spec.sidecars.items()
        }
        src = self._stored_size()
        self.sampler: TrainSampler | None = None
        if spec.train:
            restrict = self._keys(spec.restrict_keys)
            over = self._keys(spec.oversample_keys)
            base = base_indices(len(self.reader), restrict, over)
            self.sampler = TrainSampler(
                base,
                world_size=world_size,
                rank=rank,
                batch_per_rank=spec.batch_per_rank,
                accum=spec.accum,
                seed=spec.seed,
                max_steps=spec.max_steps,
            )
            if rank == 0:
                logger.info(
                    "%s: %d samples per epoch (%d over-sampled), %d steps per rank, %d dropped per epoch",
                    spec.split,
                    len(base),
                    0 if over is None else len(np.unique(over)),
                    self.sampler.steps_per_epoch,
                    self.sampler.dropped_per_epoch,
                )
        self._src = src

    def _stored_size(self) -> tuple[int, int] | None:
        size = read_json(Path(self.spec.root) / "_dataset.json")["config"]["size"]
        return (size, size) if size else None

    def _keys(self, path: str | None) -> np.ndarray | None:
        return None if path is None else self.reader.indices_of(read_key_list(path), source=str(path))

    def __len__(self) -> int:
        if self.sampler is not None:
            return self.sampler.steps_per_epoch
        return len(
            eval_batches(len(self.reader), world_size=self.world_size, rank=self.rank, batch=self.spec.batch_per_rank)
        )

    @property
    def num_samples(self) -> int:
        """Samples in the split."""
        return len(self.reader)

    @cached_property
    def out_size(self) -> int:
        """The side of the transform's output, the same for every sample (first sample's; 0 for an empty split)."""
        return self.geometry(0, 0, 0).out if len(self.reader) else 0

    def geometry(self, index: int, position: int, epoch: int) -> SampleGeometry:
        """The crop/flip of one sample (random only for training)."""
        return draw_geometry(self.spec, self._src, self.reader, index, position, epoch)

    def geometries(self, indices: np.ndarray, positions: np.ndarray, epoch: int) -> list[SampleGeometry]:
        """The crops/flips of a batch (random only for training), drawn at once."""
        return draw_geometries(self.spec, self._src, self.reader, indices, positions, epoch)

    def _plan(self) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
        if self.sampler is not None:
            return self.sampler.state.epoch, self.sampler.remaining_batches()
        batches = eval_batches(
            len(self.reader), world_size=self.world_size, rank=self.rank, batch=self.spec.batch_per_rank
        )
        return 0, [(b, b) for b in batches]

    @abstractmethod
    def _image_batches(self, epoch: int, plan: list[tuple[np.ndarray, np.ndarray]]) -> Iterator[torch.Tensor]:
        """Yield (B, 1, H, W) images in [0, 255] for each planned (indices, positions) batch: float32, or uint8
        with ``resample="uint8"``."""

    def _join(self, images: torch.Tensor, indices: np.ndarray, positions: np.ndarray, epoch: int) -> dict[str, Any]:
        images = images.to(self.device, non_blocking=True)  # uint8 batches cross to the device at 1 byte a pixel
        batch: dict[str, Any] = {
            "image": normalize_batch(images.float(), self.spec.normalize, self.spec.channels),
            "labels": torch.from_numpy(self.reader.labels[indices].astype(np.float32)).to(self.device),
            "index": torch.from_numpy(np.asarray(indices, dtype=np.int64)).to(self.device),
        }
        for name, sc in self.sidecars.items():
            rows = torch.from_numpy(sc.rows(indices))
            if sc.kind == "image":
                geoms = self.geometries(indices, positions, epoch)
                rows = torch.stack([self._map_geometry(r, g) for r, g in zip(rows, geoms)])
            batch[name] = rows.to(self.device)
        return batch

    def _map_geometry(self, plane: torch.Tensor, g: SampleGeometry) -> torch.Tensor:
        """Apply an image's geometry to a sidecar map stored at its own resolution (values resampled as floats)."""
        return map_plane(plane, g, self._src)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, plan = self._plan()
        for (indices, positions), images in zip(plan, self._image_batches(epoch, plan)):
            batch = self._join(images, indices, positions, epoch)
            if self.sampler is not None:
                self.sampler.advance()  # counted when handed out: a checkpoint after this step includes it
                batch["step_label_counts"] = self._step_label_counts(epoch, int(positions[0]))
            yield batch

    def _step_label_counts(self, epoch: int, position: int) -> torch.Tensor:
        """(P, N) over the label matrix of the optimizer step that holds ``position`` (see the module docstring)."""
        labels = self.reader.labels[self.sampler.step_indices(epoch, position)]
        pos = float(labels.sum())
        return torch.tensor([pos, labels.size - pos], dtype=torch.float64).to(self.device)

    def iterate_indices(self, batches: list[np.ndarray]) -> Iterator[dict[str, Any]]:
        """Evaluation batches of the given global indices, in order (e.g. only the rows a resumable writer lacks).

        Each index batch may hold up to ``batch_per_rank`` samples; geometry is the deterministic eval one.
        """
        if self.sampler is not None:
            raise ValueError("iterate_indices is for evaluation loaders (train=False)")
        plan = [(np.asarray(b, dtype=np.int64), np.asarray(b, dtype=np.int64)) for b in batches if len(b)]
        if any(len(i) > self.spec.batch_per_rank for i, _ in plan):
            raise ValueError(f"index batches must hold at most batch_per_rank={self.spec.batch_per_rank} samples")
        for (indices, positions), images in zip(plan, self._image_batches(0, plan)):
            yield self._join(images, indices, positions, 0)

    def state_dict(self) -> dict[str, int]:
        """Position of a training loader (epoch, samples consumed, seed)."""
        if self.sampler is None:
            raise ValueError("evaluation loaders have no position")
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position."""
        if self.sampler is None:
            raise ValueError("evaluation loaders have no position")
        if int(state["seed"]) != self.spec.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this run uses {self.spec.seed}")
        self.sampler.load_state_dict(state)

    @property
    def epoch(self) -> int:
        """Current epoch of a training loader."""
        return self.sampler.state.epoch if self.sampler else 0
