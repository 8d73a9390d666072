"""The lung/heart segmentation set of ``lungheart`` (fang2021 §4.1): JSRT images with SCR masks.

Two layouts are read, both rooted at one folder (``method.options.seg_root``):

- **The real release** (no ``layout.json``). Put the JSRT CD's image folder and the SCR ``scratch`` folder
  side by side::

      <seg_root>/JSRT/All247images/JPCLN001.IMG ... JPCNN093.IMG
      <seg_root>/SCR/scratch/fold1/masks/{heart,left lung,right lung,...}/JPCLN001.gif ...
      <seg_root>/SCR/scratch/fold2/masks/...

  A JSRT ``.IMG`` is raw pixels without a header: 2048 × 2048 big-endian uint16 holding 12-bit values, dense
  (bone) = 0, so grey = 1 − value / 4095. An SCR mask is a 1024 × 1024 GIF (0 background, 255 structure),
  half the image's size. "left" is the patient's left, on the image's right (PA view). An image is used when
  its three masks (left lung, right lung, heart) exist in either fold; a missing one is an error naming it.
- **The phantom's set** (``cxrdist.phantom.generate``, ``<phantom>/segmentation``): the same names and formats
  at a smaller size, described by its ``layout.json`` (sizes, mask path pattern, folds).

Images are decoded once and resized to a working size (8-bit grey, the radiograph's usual display polarity,
dense = white, like the NIH PNGs); masks are resized with the image and re-binarised at 0.5.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cxrdist.data.format import DataError

# The U-Net's output channels, in order (fang2021 §3.3: "left lung, right lung, and heart"); SCR folder names.
STRUCTURES: tuple[str, ...] = ("left lung", "right lung", "heart")
JSRT_SIDE = 2048  # real JSRT: 2048 × 2048 pixels, 0.175 mm, 12 bits
JSRT_MAX = 4095


@dataclass(frozen=True)
class SegLayout:
    """Where and how a JSRT + SCR style set is stored."""

    images_dir: str = "JSRT/All247images"
    suffix: str = ".IMG"
    side: int | None = None  # None: inferred from the file size (square images, 2 bytes a pixel)
    masks_dir: str = "SCR/scratch"
    mask_pattern: str = "{fold}/masks/{structure}/{name}.gif"
    folds: tuple[str, ...] = ("fold1", "fold2")
    phantom: bool = False


@dataclass
class SegSet:
    """A decoded segmentation set: ``images`` (N, S, S) uint8 grey, ``masks`` (N, 3, S, S) uint8 0/1."""

    names: list[str]
    images: np.ndarray
    masks: np.ndarray
    folds: list[str] = field(default_factory=list)


def detect_layout(root: str | Path) -> SegLayout:
    """The phantom layout when ``root/layout.json`` exists, else the real release's."""
    path = Path(root) / "layout.json"
    if not path.is_file():
        return SegLayout()
    lay = json.loads(path.read_text())
    jsrt, scr = lay["jsrt"], lay["scr"]
    if jsrt.get("dtype") != ">u2" or jsrt.get("header_bytes", 0) or jsrt["width"] != jsrt["height"]:
        raise DataError(f"{path}: only square headerless big-endian uint16 images are supported")
    return SegLayout(
        jsrt["dir"],
        jsrt["suffix"],
        int(jsrt["width"]),
        scr["dir"],
        scr["masks"],
        tuple(scr.get("folds", {}).keys()) or ("fold1", "fold2"),
        bool(lay.get("phantom")),
    )


def read_jsrt_image(path: str | Path, side: int | None = None) -> np.ndarray:
    """Read a JSRT ``.IMG`` (raw big-endian 12-bit) → (side, side) uint8 grey with dense = white.

    Raises:
        DataError: the file's size is not 2·side² bytes (or not a square when ``side`` is None), or a value
            exceeds 12 bits.
    """
    raw = np.fromfile(path, dtype=">u2")
    n = side or int(round(np.sqrt(raw.size)))
    if raw.size != n * n:
        raise DataError(f"{path}: {raw.size * 2} bytes is not a {n}×{n} 16-bit image")
    if raw.size and raw.max() > JSRT_MAX:
        raise DataError(f"{path}: value {int(raw.max())} exceeds 12 bits (not a JSRT .IMG?)")
    grey = (JSRT_MAX - raw.astype(np.float32)) * (255.0 / JSRT_MAX)
    return np.rint(grey).astype(np.uint8).reshape(n, n)


def read_scr_mask(path: str | Path) -> np.ndarray:
    """Read an SCR mask GIF → bool array (any non-zero palette index is the structure)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 127
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable mask: {e}") from None


def _mask_path(root: Path, lay: SegLayout, name: str, structure: str) -> Path:
    for fold in lay.folds:
        p = root / lay.masks_dir / lay.mask_pattern.format(fold=fold, structure=structure, name=name)
        if p.is_file():
            return p
    tried = lay.mask_pattern.format(fold="{" + ",".join(lay.folds) + "}", structure=structure, name=name)
    raise DataError(f"{root / lay.masks_dir / tried}: SCR mask missing for {name}")


def list_images(root: str | Path) -> list[Path]:
    """The set's image files, sorted by name; an empty or missing folder is an error."""
    root = Path(root)
    lay = detect_layout(root)
    images = sorted((root / lay.images_dir).glob(f"*{lay.suffix}"))
    if not images:
        raise DataError(f"{root / lay.images_dir}: no *{lay.suffix} images (see cxrdist/data/jsrt.py for the layout)")
    return images


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of an (H, W) uint8/float array to size × size (float32)."""
    im = Image.fromarray(array.astype(np.float32), mode="F")
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def load_segmentation_set(root: str | Path, size: int) -> SegSet:
    """Decode every image of the set with its left lung, right lung and heart masks, resized to ``size``²."""
    root = Path(root)
    lay = detect_layout(root)
    names, images, masks, folds = [], [], [], []
    for img_path in list_images(root):
        name = img_path.name[: -len(lay.suffix)]
        paths = [_mask_path(root, lay, name, s) for s in STRUCTURES]
        images.append(np.clip(np.rint(_resize(read_jsrt_image(img_path, lay.side), size)), 0, 255).astype(np.uint8))
        masks.append(np.stack([_resize(read_scr_mask(p).astype(np.float32), size) >= 0.5 for p in paths]))
        names.append(name)
        folds.append(paths[0].relative_to(root / lay.masks_dir).parts[0])
    return SegSet(names, np.stack(images), np.stack(masks).astype(np.uint8), folds)


def split_set(num: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: a seeded random ``val_fraction`` held out (JSRT has one image per patient)."""
    if not 0.0 < val_fraction < 1.0 or num < 2:
        raise ValueError(f"need >= 2 images and 0 < val_fraction < 1 (got {num} images, {val_fraction})")
    perm = np.random.default_rng([seed, 2021]).permutation(num)
    n_val = min(max(1, int(round(num * val_fraction))), num - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
