"""One declarative transform spec that drives both loaders identically.

A spec is a list of ops (``resize``, ``resize_nearest``, ``center_crop``, ``random_resized_crop``,
``random_translate_crop``, ``hflip``) plus a normalisation and a channel count. Every geometric chain reduces
to *one crop window in the stored image's pixels, resampled to the output size, then an optional flip*. The
windows and flips of a whole batch are drawn at once, with array operations (:func:`sample_geometries`), from
counter-based uniforms: each a hash of (seed, epoch, position in the epoch, draw number)
(:func:`sample_uniforms`), so a sample's augmentation depends on its position alone, never on the batch, rank or
worker that draws it; both loaders apply the very same geometry, a resumed epoch redraws the same augmentation,
and the result does not depend on the number of workers. Every random op takes a fixed number of uniforms
(:func:`uniform_columns`). The window is rounded to whole pixels (at most half a pixel from the exact composition
of the ops). Normalisation and the grey → 3 channel copy run in :func:`normalize_batch`, on
the batch's device, for both loaders.
"""

from __future__ import annotations

import io
import math
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

GEOMETRIC_OPS = ("resize", "resize_nearest", "center_crop", "random_resized_crop", "random_translate_crop", "hflip")
NORMALIZATIONS = ("imagenet", "imagenet_mean", "minus_one_one", "unit", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SampleGeometry(NamedTuple):
    """What to do to one stored image: crop window (ints, source pixels), output size, flip, interpolation.

    A named tuple, not a frozen dataclass: a loader makes one per sample, and a tuple is built ~4× faster.
    """

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


# SplitMix64 (Steele, Lea & Flood, OOPSLA 2014; Java's SplittableRandom): its golden-ratio increment and its
# finaliser (Stafford's Mix13 shifts and multipliers).
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MUL1, _MUL2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_MASK64 = (1 << 64) - 1
RRC_TRIES = 10  # torchvision's RandomResizedCrop: 10 tries, then its fallback
Window = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x, y, w, h: one entry per sample


def _mix(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Absorb ``v`` into the hash ``h`` (uint64 arrays, broadcast): SplitMix64's finaliser of h + v + γ.

    Array arithmetic in uint64 wraps modulo 2**64 without a warning (only NumPy scalars warn), so every operand here
    is an array or a ``np.uint64`` constant, never a Python int that NumPy would have to cast.
    """
    z = h + v + _GAMMA
    z = (z ^ (z >> _S30)) * _MUL1
    z = (z ^ (z >> _S27)) * _MUL2
    return z ^ (z >> _S31)


def sample_uniforms(seed: int, epoch: int, positions: np.ndarray, k: int) -> np.ndarray:
    """(n, k) float64 uniforms in [0, 1): entry (i, j) is a hash of (seed, epoch, positions[i], j) alone.

    Counter-based (no generator state): a sample's augmentation draws depend only on where it sits in the epoch,
    never on the batch, rank or worker that draws them, so a resumed epoch and any worker count redraw them
    exactly. The hash chains SplitMix64's finaliser over the four values; its top 53 bits give the float.
    """
    pos = np.asarray(positions).reshape(-1)
    if pos.size and int(pos.min()) < 0:
        raise ValueError(f"sample positions must be >= 0, got {int(pos.min())}")
    prefix = _mix(np.array([seed & _MASK64], dtype=np.uint64), np.array([epoch & _MASK64], dtype=np.uint64))
    per_sample = _mix(prefix, pos.astype(np.uint64))
    bits = _mix(per_sample[:, None], np.arange(k, dtype=np.uint64)[None, :])
    return (bits >> _S11).astype(np.float64) * 2.0**-53


def uniform_columns(ops: list[dict[str, Any]]) -> int:
    """How many uniforms per sample :func:`sample_geometries` consumes for ``ops`` (a fixed number per random op:
    random_resized_crop 10 tries × (area, ratio) + 2 offsets, random_translate_crop 2 shifts, hflip 1)."""
    per_op = {"random_resized_crop": RRC_TRIES * 2 + 2, "random_translate_crop": 2, "hflip": 1}
    return sum(per_op.get(op["op"], 0) for op in ops)


def _sample_rrc(u: np.ndarray, fw: np.ndarray, fh: np.ndarray, op: dict) -> Window:
    """torchvision's RandomResizedCrop windows (in the current frames) from ``u`` (n, 22), vectorised over samples.

    Try t uses columns 2t (area scale, uniform in ``scale``) and 2t + 1 (log aspect ratio, uniform in log ``ratio``);
    the first try whose window fits the frame wins, its offsets are uniform over the room left (columns 20, 21);
    when none of the 10 fits, the largest centred square (this module's fallback).
    """
    lo, hi = op.get("scale", (0.08, 1.0))
    rlo, rhi = (math.log(r) for r in op.get("ratio", (3 / 4, 4 / 3)))
    n = len(u)
    target = (fw * fh)[:, None] * (lo + (hi - lo) * u[:, 0 : 2 * RRC_TRIES : 2])
    ratio = np.exp(rlo + (rhi - rlo) * u[:, 1 : 2 * RRC_TRIES : 2])
    w, h = np.sqrt(target * ratio), np.sqrt(target / ratio)
    ok = (w > 0) & (w <= fw[:, None]) & (h > 0) & (h <= fh[:, None])
    found, first = ok.any(1), ok.argmax(1)
    w, h = w[np.arange(n), first], h[np.arange(n), first]
    side = np.minimum(fw, fh)
    x = np.where(found, u[:, 2 * RRC_TRIES] * (fw - w), (fw - side) / 2)
    y = np.where(found, u[:, 2 * RRC_TRIES + 1] * (fh - h), (fh - side) / 2)
    return x, y, np.where(found, w, side), np.where(found, h, side)


def _crop(name: str, op: dict, u: np.ndarray | None, fw: np.ndarray, fh: np.ndarray) -> Window:
    """One crop op's window (x, y, w, h) in the current frames; raises if a fixed-size crop exceeds a frame."""
    if name == "random_resized_crop" and u is not None:
        return _sample_rrc(u, fw, fh, op)
    size = float(op["size"])
    cx, cy = (fw - size) / 2, (fh - size) / 2
    if name == "random_translate_crop" and u is not None:
        s = int(op["max_shift"])
        # the integer shift uniform in [-s, s], then clamped so the crop stays in the frame
        dx, dy = np.floor(u[:, 0] * (2 * s + 1)) - s, np.floor(u[:, 1] * (2 * s + 1)) - s
        cx = np.minimum(np.maximum(cx + dx, 0.0), fw - size)
        cy = np.minimum(np.maximum(cy + dy, 0.0), fh - size)
    bad = (size > fw) | (size > fh)
    if bad.any():
        i = int(bad.argmax())
        raise ValueError(f"{name} of {size:g} px from a {fw[i]:g}×{fh[i]:g} frame")
    full = np.full_like(fw, size)
    return cx, cy, full, full


def sample_geometries(ops: list[dict[str, Any]], sizes: np.ndarray, u: np.ndarray | None) -> list[SampleGeometry]:
    """Compose ``ops`` on n stored images of ``sizes`` (n, 2) = (width, height) into one window + flip each.

    ``u`` (n, :func:`uniform_columns`) are each sample's uniforms (:func:`sample_uniforms`), consumed in op order;
    None means deterministic (evaluation): random crops fall back to their centre, flips are off.
    """
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    n, col = len(sizes), 0
    if u is not None and u.shape != (n, uniform_columns(ops)):
        raise ValueError(f"uniforms of shape {u.shape}, expected {(n, uniform_columns(ops))} for these ops")
    # The window (x, y, w, h) is in source pixels; the frame (fw, fh) is the size the current op sees.
    x, y, w, h = np.zeros(n), np.zeros(n), sizes[:, 0].copy(), sizes[:, 1].copy()
    fw, fh = w.copy(), h.copy()
    flip, nearest = np.zeros(n, dtype=bool), False
    for op in ops:
        name = op["op"]
        if name in ("resize", "resize_nearest"):
            fw, fh = np.full(n, float(op["size"])), np.full(n, float(op["size"]))
            nearest = nearest or name == "resize_nearest"
            continue
        take = uniform_columns([op])
        mine = None if u is None else u[:, col : col + take]
        col += take
        if name == "hflip":
            flip = np.zeros(n, dtype=bool) if mine is None else mine[:, 0] < op.get("p", 0.5)
            continue
        cx, cy, cw, ch = _crop(name, op, mine, fw, fh)
        sx, sy = w / fw, h / fh
        x, y, w, h = x + cx * sx, y + cy * sy, cw * sx, ch * sy
        fw, fh = np.full(n, float(op["size"])), np.full(n, float(op["size"]))
    if n and (np.rint(fw) != np.rint(fh)).any():
        i = int((np.rint(fw) != np.rint(fh)).argmax())
        raise ValueError(f"transform ends on a non-square {fw[i]:g}×{fh[i]:g} frame; end with a resize or crop")
    # np.rint rounds half to even, as Python's round() did in the one-sample code: eval windows are unchanged
    x0, y0 = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    x1 = np.minimum(np.rint(x + w).astype(np.int64), sizes[:, 0].astype(np.int64))
    y1 = np.minimum(np.rint(y + h).astype(np.int64), sizes[:, 1].astype(np.int64))
    cols = (x0, y0, np.maximum(x1 - x0, 1), np.maximum(y1 - y0, 1), np.rint(fw).astype(np.int64), flip)
    return list(map(SampleGeometry, *(c.tolist() for c in cols), [nearest] * n))


def sample_geometry(ops: list[dict[str, Any]], src: tuple[int, int], u: np.ndarray | None = None) -> SampleGeometry:
    """One sample's :func:`sample_geometries`: ``src`` = (width, height), ``u`` its uniforms (k,) or None (eval)."""
    return sample_geometries(ops, np.asarray([src]), None if u is None else np.asarray(u)[None])[0]


def apply_geometry_torch(img: torch.Tensor, g: SampleGeometry, out: np.ndarray | None = None) -> torch.Tensor:
    """Crop, resample and flip one (H, W) uint8 image; returns float32 (1, out, out) in [0, 255].

    ``out``: a float32 (1, out, out) array to write the result into (a loader's batch slot); the flip is then the
    write's reversed read, not a copy of its own.
    """
    crop = img[g.y0 : g.y0 + g.h, g.x0 : g.x0 + g.w].float()[None, None]
    if crop.shape[-2:] != (g.out, g.out):
        if g.nearest:
            crop = torch.nn.functional.interpolate(crop, size=(g.out, g.out), mode="nearest")
        else:
            crop = torch.nn.functional.interpolate(
                crop, size=(g.out, g.out), mode="bilinear", antialias=True, align_corners=False
            )
    crop = crop[0]
    if out is None:
        return crop.flip(-1) if g.flip else crop
    out[...] = crop.numpy()[..., ::-1] if g.flip else crop.numpy()
    return torch.from_numpy(out)


def apply_geometry_pil(data: bytes, g: SampleGeometry, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one grey JPEG, crop, resample in 8 bit with PIL and flip: uint8 (out, out) (``resample="uint8"``).

    PIL's antialiased bilinear (nearest for ``resize_nearest``) on the crop, as :func:`apply_geometry_torch` does in
    float32; PIL's fixed-point filter and its rounding to 8 bit put the result within ~1 grey level of the float one.
    ``out``: a uint8 (out, out) array to write the result into (flipped by the write's reversed read).
    """
    with Image.open(io.BytesIO(data)) as im:
        if im.mode != "L":
            im = im.convert("L")
        im = im.crop((g.x0, g.y0, g.x0 + g.w, g.y0 + g.h))
    if im.size != (g.out, g.out):
        filt = Image.Resampling.NEAREST if g.nearest else Image.Resampling.BILINEAR
        im = im.resize((g.out, g.out), filt)
    arr = np.asarray(im)  # read-only over PIL's bytes: copied below
    if out is None:
        return np.ascontiguousarray(arr[:, ::-1]) if g.flip else arr.copy()
    out[...] = arr[:, ::-1] if g.flip else arr
    return out


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
