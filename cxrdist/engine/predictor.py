"""Predict with a trained model on user images, the way the evaluator scores shard images.

A user image (full-resolution 8-bit grey, :mod:`cxrdist.data.images`) becomes the image a shard would store
(:func:`~cxrdist.data.images.stored_gray`: the writer's resize, without the JPEG encode), then the loader's eval
geometry and normalisation (:mod:`cxrdist.data.transforms`, the same functions the loaders call). What a
method's final model reads from a sidecar in evaluation (lungheart's lung/heart mask, diseasemask's affine) is
computed here by the auxiliary network that wrote the sidecar (:class:`AuxNet`), with the same row function,
rounded to the sidecar's storage dtype and cropped like an "image" sidecar. The batch then goes through the
method's own ``maps`` (the evaluator's), and the maps are pasted back into the stored frame as the evaluator does
(:func:`~cxrdist.data.transforms.paste_maps`). Nothing here names a method.

The one difference from evaluation on a shard is the shard's JPEG re-encode (quality 95): predict skips it, so
probabilities differ by what up to a few grey levels change (tests/deploy state the measured tolerance);
``jpeg_quality`` reproduces the shard's pixels exactly for tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from cxrdist.data.images import GrayImage, Skip, gray_from_pil, read_image, stored_gray
from cxrdist.data.transforms import (
    SampleGeometry,
    apply_geometry_torch,
    map_plane,
    normalize_batch,
    paste_maps,
    sample_geometries,
)
from cxrdist.eval.thresholds import calls, sigmoid

MapsFn = Callable[[nn.Module, dict[str, Any]], tuple[Tensor, Tensor]]


def as_gray(array: np.ndarray) -> np.ndarray:
    """An in-memory image → (H, W) uint8 grey by the file reader's rules: uint8 or uint16 grey, or uint8
    (H, W, 3|4) RGB(A) (ITU-R 601-2 luma, as for RGB PNGs). Other arrays are refused (ValueError)."""
    a = np.asarray(array)
    if a.ndim == 2 and a.dtype == np.uint8:
        return a
    if a.ndim == 2 and a.dtype == np.uint16:
        return gray_from_pil(Image.fromarray(a, mode="I;16"))
    if a.ndim == 3 and a.shape[2] in (3, 4) and a.dtype == np.uint8:
        return gray_from_pil(Image.fromarray(a))
    raise ValueError(
        f"image array of shape {a.shape} and dtype {a.dtype}: give (H, W) uint8/uint16 grey or (H, W, 3|4) uint8 "
        "RGB(A), the pixels as a PNG would hold them"
    )


def read_inputs(images: Sequence[Any]) -> tuple[list[tuple[str, np.ndarray]], list[Skip]]:
    """Paths and arrays → ([(name, full-resolution grey)], [skips]); an array's name is ``array[i]``."""
    items, skipped = [], []
    for i, im in enumerate(images):
        if isinstance(im, np.ndarray):
            items.append((f"array[{i}]", as_gray(im)))
            continue
        r = read_image(im)
        if isinstance(r, GrayImage):
            items.append((str(r.path), r.pixels))
        else:
            skipped.append(r)
    return items, skipped


@dataclass
class AuxNet:
    """An auxiliary network whose per-image output the final model reads as the loader sidecar ``sidecar``.

    ``compute(net, images)`` is the row function of the stage that writes the sidecar (the same function), on
    images prepared with ``transforms`` (a recipe's ``eval`` ops, ``normalize``, ``channels``).
    """

    sidecar: str  # the batch key the final model reads ("mask", "affine")
    stage: str  # the stage that trains the network
    weights: str  # its weights file in that stage's dir
    build: Callable[[], nn.Module]
    transforms: Any
    compute: Callable[[nn.Module, Tensor], Tensor]
    kind: str  # "image" (cropped with the image) or "vector"
    dtype: str  # the sidecar's storage dtype: rows are rounded to it as the sidecar stores them


def eval_batch(grays: Sequence[np.ndarray], transforms: Any, device: torch.device) -> tuple[Tensor, list]:
    """Stored grey images → the loader's eval batch (normalised, on ``device``) and each image's geometry."""
    ops = [dict(o) for o in transforms["eval"]]
    geoms = sample_geometries(ops, [(g.shape[1], g.shape[0]) for g in grays], None)  # one draw for the batch
    images = [torch.from_numpy(np.require(g, requirements=["C", "W"])) for g in grays]  # writable: no torch warning
    x = torch.stack([apply_geometry_torch(img, s) for img, s in zip(images, geoms)])
    return normalize_batch(x.to(device), transforms["normalize"], int(transforms["channels"])), geoms


@dataclass
class Predictor:
    """A trained model ready for user images; see the module docstring. Built by :mod:`cxrdist.deploy`."""

    labels: list[str]
    model: nn.Module
    maps: MapsFn
    transforms: Any  # the final model's recipe transforms
    stored_size: int  # the shards' image side (0: stored at the original size)
    compare_size: int  # the stored frame's side for heatmaps (eval.compare_size)
    thresholds: list[float | None]  # operating threshold per class (None: undefined on val)
    box_threshold: float  # heatmap binarisation for predicted boxes (eval.thresholds[0])
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    aux: list[tuple[AuxNet, nn.Module]] = field(default_factory=list)
    aux_dtype: torch.dtype | None = None  # the sidecar stages' autocast (engine precision; None = fp32)
    info: dict[str, Any] = field(default_factory=dict)  # method, source, provenance

    def stored(self, pixels: np.ndarray, jpeg_quality: int | None = None) -> np.ndarray:
        """A full-resolution grey image → the image a shard stores (``jpeg_quality``: with the shard's re-encode)."""
        return stored_gray(pixels, self.stored_size, jpeg_quality)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.aux_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.aux_dtype)

    @torch.no_grad()
    def forward(self, stored: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[SampleGeometry]]:
        """Stored grey images → (logits (B, 14), maps (B, 14, h, w) in the network-input frame, geometries)."""
        image, geoms = eval_batch(stored, self.transforms, self.device)
        batch: dict[str, Any] = {"image": image}
        for aux, net in self.aux:
            x, _ = eval_batch(stored, aux.transforms, self.device)
            with self._autocast():
                rows = aux.compute(net, x)
            rows = torch.from_numpy(rows.float().cpu().numpy().astype(aux.dtype))  # the sidecar's storage rounding
            if aux.kind == "image":
                rows = torch.stack([map_plane(r, g, (s.shape[1], s.shape[0])) for r, g, s in zip(rows, geoms, stored)])
            batch[aux.sidecar] = rows.to(self.device)
        logits, maps = self.maps(self.model, batch)
        return logits.float().cpu().numpy(), maps.float().cpu().numpy(), geoms

    def full_frame(self, maps: np.ndarray, geom: SampleGeometry, stored: np.ndarray) -> np.ndarray:
        """One image's (14, h, w) maps → (14, compare, compare) over the whole stored (= original) image."""
        src = (stored.shape[1], stored.shape[0])
        return paste_maps(torch.from_numpy(maps), geom, src, self.compare_size).numpy()

    def calls(self, probs: np.ndarray) -> np.ndarray:
        """Positive (1) / negative (0) calls at the operating thresholds; -1 where a class has none."""
        return calls(probs, self.thresholds)

    def predict(self, images: Sequence[Any], batch_size: int = 16) -> dict[str, Any]:
        """Probabilities, calls and full-frame heatmaps of images given as paths or arrays (see
        :func:`as_gray` for what an array may be).

        Returns a dict: ``probs`` (N, 14), ``calls`` (N, 14), ``heatmaps`` (N, 14, compare, compare) float32 over
        the whole image, ``names`` (N,), and ``skipped`` (path, reason) for paths that could not be read.
        """
        items, skipped = read_inputs(images)
        probs, heat = [], []
        for lo in range(0, len(items), batch_size):
            chunk = [self.stored(p) for _, p in items[lo : lo + batch_size]]
            logits, maps, geoms = self.forward(chunk)
            probs.append(sigmoid(logits))
            heat += [self.full_frame(m, g, s) for m, g, s in zip(maps, geoms, chunk)]
        p = np.concatenate(probs) if probs else np.zeros((0, len(self.labels)))
        hw = (0, len(self.labels), self.compare_size, self.compare_size)
        return {
            "names": [n for n, _ in items],
            "probs": p,
            "calls": self.calls(p),
            "heatmaps": np.stack(heat) if heat else np.zeros(hw, np.float32),
            "skipped": skipped,
        }
