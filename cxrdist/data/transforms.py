"""One declarative transform spec that drives both loaders identically.

A spec is a list of ops (``resize``, ``resize_nearest``, ``center_crop``, ``random_resized_crop``,
``random_translate_crop``, ``hflip``) plus a normalisation and a channel count. Every geometric chain reduces
to *one crop window in the stored image's pixels, resampled to the output size, then an optional flip*: the
window and the flip are drawn in Python from a per-sample RNG keyed by (seed, epoch, position in the epoch),
so both loaders apply the very same geometry, a resumed epoch redraws the same augmentation, and the result
does not depend on the number of workers. The window is rounded to whole pixels (at most half a pixel from the
exact composition of the ops). Normalisation and the grey → 3 channel copy run in :func:`normalize_batch`, on
the batch's device, for both loaders.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

GEOMETRIC_OPS = ("resize", "resize_nearest", "center_crop", "random_resized_crop", "random_translate_crop", "hflip")
NORMALIZATIONS = ("imagenet", "imagenet_mean", "minus_one_one", "unit", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SampleGeometry:
    """What to do to one stored image: crop window (ints, source pixels), output size, flip, interpolation."""

    x0: int
    y0: int
    w: int
    h: int
    out: int
    flip: bool
    nearest: bool


def validate_ops(ops: list[dict[str, Any]], where: str = "transform") -> None:
    """Check a spec's op names and arguments; raise ValueError naming the bad op."""
    need = {
        "resize": {"size"},
        "resize_nearest": {"size"},
        "center_crop": {"size"},
        "random_resized_crop": {"size"},
        "random_translate_crop": {"size", "max_shift"},
        "hflip": set(),
    }
    allowed = {"random_resized_crop": {"size", "scale", "ratio"}, "hflip": {"p"}}
    for i, op in enumerate(ops):
        name = op.get("op")
        if name not in need:
            raise ValueError(f"{where}[{i}]: unknown op {name!r}; known: {', '.join(GEOMETRIC_OPS)}")
        keys = set(op) - {"op"}
        if not need[name] <= keys or not keys <= need[name] | allowed.get(name, set()):
            raise ValueError(
                f"{where}[{i}] ({name}): arguments {sorted(keys)}, expected {sorted(need[name])} "
                f"(+ optional {sorted(allowed.get(name, set()))})"
            )


def _sample_rrc(rng: np.random.Generator, fw: float, fh: float, op: dict) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop window (in the current frame), with its fallback to a center crop."""
    lo, hi = op.get("scale", (0.08, 1.0))
    rlo, rhi = op.get("ratio", (3 / 4, 4 / 3))
    area = fw * fh
    for _ in range(10):
        target = area * rng.uniform(lo, hi)
        ratio = math.exp(rng.uniform(math.log(rlo), math.log(rhi)))
        w, h = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if 0 < w <= fw and 0 < h <= fh:
            return rng.uniform(0, fw - w), rng.uniform(0, fh - h), w, h
    side = min(fw, fh)
    return (fw - side) / 2, (fh - side) / 2, side, side


def sample_geometry(ops: list[dict[str, Any]], src: tuple[int, int], rng: np.random.Generator | None) -> SampleGeometry:
    """Compose ``ops`` on a ``src`` = (width, height) image into one window + flip.

    ``rng`` None means deterministic (evaluation): random crops fall back to their center, flips are off.
    """
    # The window (x, y, w, h) is in source pixels; the frame (fw, fh) is the size the current op sees.
    x, y, w, h = 0.0, 0.0, float(src[0]), float(src[1])
    fw, fh = w, h
    flip, nearest = False, False
    for op in ops:
        name = op["op"]
        if name in ("resize", "resize_nearest"):
            fw = fh = float(op["size"])
            nearest = nearest or name == "resize_nearest"
            continue
        if name == "hflip":
            flip = rng is not None and rng.random() < op.get("p", 0.5)
            continue
        size = float(op["size"])
        if name == "random_resized_crop" and rng is not None:
            cx, cy, cw, ch = _sample_rrc(rng, fw, fh, op)
        else:
            shift = 0.0
            cx, cy, cw, ch = (fw - size) / 2, (fh - size) / 2, size, size
            if name == "random_translate_crop" and rng is not None:
                shift = op["max_shift"]
                cx = min(max(cx + rng.integers(-shift, shift + 1), 0.0), fw - size)
                cy = min(max(cy + rng.integers(-shift, shift + 1), 0.0), fh - size)
            if size > fw or size > fh:
                raise ValueError(f"{name} of {size:g} px from a {fw:g}×{fh:g} frame")
        sx, sy = w / fw, h / fh
        x, y, w, h = x + cx * sx, y + cy * sy, cw * sx, ch * sy
        fw, fh = size, size
    x0, y0 = int(round(x)), int(round(y))
    x1, y1 = min(int(round(x + w)), src[0]), min(int(round(y + h)), src[1])
    if round(fw) != round(fh):
        raise ValueError(f"transform ends on a non-square {fw:g}×{fh:g} frame; end with a resize or crop")
    return SampleGeometry(x0, y0, max(x1 - x0, 1), max(y1 - y0, 1), int(round(fw)), flip, nearest)


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The augmentation RNG of one sample: a pure function of (seed, epoch, position in the epoch)."""
    return np.random.default_rng([seed, epoch, position])


def apply_geometry_torch(img: torch.Tensor, g: SampleGeometry) -> torch.Tensor:
    """Crop, resample and flip one (H, W) uint8 image; returns float32 (1, out, out) in [0, 255]."""
    crop = img[g.y0 : g.y0 + g.h, g.x0 : g.x0 + g.w].float()[None, None]
    if crop.shape[-2:] != (g.out, g.out):
        if g.nearest:
            crop = torch.nn.functional.interpolate(crop, size=(g.out, g.out), mode="nearest")
        else:
            crop = torch.nn.functional.interpolate(
                crop, size=(g.out, g.out), mode="bilinear", antialias=True, align_corners=False
            )
    crop = crop[0]
    return crop.flip(-1) if g.flip else crop


def apply_geometry_pil(data: bytes, g: SampleGeometry) -> np.ndarray:
    """Decode one grey JPEG, crop, resample in 8 bit with PIL and flip: uint8 (out, out) (``resample="uint8"``).

    PIL's antialiased bilinear (nearest for ``resize_nearest``) on the crop, as :func:`apply_geometry_torch` does in
    float32; PIL's fixed-point filter and its rounding to 8 bit put the result within ~1 grey level of the float one.
    """
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("L").crop((g.x0, g.y0, g.x0 + g.w, g.y0 + g.h))
    if im.size != (g.out, g.out):
        filt = Image.Resampling.NEAREST if g.nearest else Image.Resampling.BILINEAR
        im = im.resize((g.out, g.out), filt)
    if g.flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.array(im)  # a writable copy: torch.from_numpy warns on PIL's read-only buffer


def normalize_batch(x: torch.Tensor, normalize: str, channels: int) -> torch.Tensor:
    """(B, 1, H, W) float in [0, 255] → the network's input: ``channels`` channels, normalised.

    ``imagenet``: /255 then ImageNet mean/std per channel; ``imagenet_mean``: /255 minus the mean only (cral);
    ``minus_one_one``: to [-1, 1] (diseasemask); ``unit``: /255, i.e. [0, 1] by the 8-bit grey range
    (amdensenet); ``none``: unchanged. Every variant is one fused pass ``x * scale + bias`` whose broadcast
    also makes the grey → 3 channel copy (a separate expand + subtract + divide costs 3 passes on the CPU).
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown normalize {normalize!r}; choose one of {NORMALIZATIONS}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    mean = torch.tensor(IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,), dtype=torch.float64)
    std = torch.tensor(IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,), dtype=torch.float64)
    ones = torch.ones(channels, dtype=torch.float64)
    scale, bias = {
        "imagenet": (1 / (255 * std), -mean / std),
        "imagenet_mean": (ones / 255, -mean),
        "minus_one_one": (ones / 127.5, -ones),
        "unit": (ones / 255, 0 * ones),
        "none": (ones, 0 * ones),
    }[normalize]
    shape = (1, channels, 1, 1)
    scale = scale.to(x.device, x.dtype).view(shape)
    bias = bias.to(x.device, x.dtype).view(shape)
    return torch.addcmul(bias, x, scale)


def map_plane(plane: torch.Tensor, g: SampleGeometry, src: tuple[int, int] | None) -> torch.Tensor:
    """Apply an image's geometry to a map of it stored at its own resolution (values resampled as floats).

    ``src`` is the stored image's (width, height) the geometry refers to (None: the window's far corner). This is
    how a loader crops an "image" sidecar (e.g. lungheart's lung/heart mask) along with its image.
    """
    sw, sh = src or (g.x0 + g.w, g.y0 + g.h)
    fy, fx = plane.shape[-2] / sh, plane.shape[-1] / sw
    scaled = SampleGeometry(
        int(g.x0 * fx), int(g.y0 * fy), max(round(g.w * fx), 1), max(round(g.h * fy), 1), g.out, g.flip, g.nearest
    )
    return apply_geometry_torch(plane.float().reshape(plane.shape[-2:]), scaled)


def paste_maps(planes: torch.Tensor, g: SampleGeometry, src: tuple[int, int], compare: int) -> torch.Tensor:
    """Undo the eval crop of (K, h, w) maps: each is resized to the crop window's place in a ``compare``² canvas
    of the whole stored image, whose outside is the map's minimum (0 after min-max: it yields no box)."""
    sw, sh = src
    x0, y0 = round(g.x0 * compare / sw), round(g.y0 * compare / sh)
    x1, y1 = round((g.x0 + g.w) * compare / sw), round((g.y0 + g.h) * compare / sh)
    up = torch.nn.functional.interpolate(
        planes.float()[None], size=(max(y1 - y0, 1), max(x1 - x0, 1)), mode="bilinear", align_corners=False
    )[0]
    out = torch.empty((len(up), compare, compare))
    for plane, canvas in zip(up, out):
        canvas.fill_(float(plane.min()))
        canvas[y0:y1, x0:x1] = plane[: compare - y0, : compare - x0]
    return out
