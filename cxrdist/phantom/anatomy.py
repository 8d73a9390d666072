"""The phantom's normal chest: a sampled, posed anatomy (body, lungs, heart, mediastinum, ribs, clavicles) rendered
to the layers of a :class:`Scene`, with the lung and heart masks.

Anatomy is defined in normalised coordinates (0..1 across the image, y down) on a posed (rotated, scaled, shifted)
copy of the pixel grid, so an image has the same anatomy at any drawing size. Image left is the patient's right
(PA view): the heart shadow lies mostly on the image's right. Findings (``findings.py``) reshape the anatomy and
draw into the scene; ``draw.py`` composes the radiograph.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Anatomy", "Box", "MASK_KEYS", "Scene", "render", "sample_anatomy"]

Box = tuple[float, float, float, float]  # x, y, w, h in the image's own pixels (NIH convention)
MASK_KEYS = ("left_lung", "right_lung", "heart")
LUNG_KEYS = ("right_lung", "left_lung")  # index 0 = image left (patient's right), 1 = image right
_SIDES = (-1.0, 1.0)


def soft(margin: np.ndarray | float, edge: float) -> np.ndarray:
    """Soft step of a signed margin (>0 inside): a linear ramp over |margin| < 2 * edge (cheaper than tanh)."""
    return np.clip(margin * (0.25 / edge) + 0.5, 0.0, 1.0)


@functools.lru_cache(maxsize=32)
def _interp(n: int, m: int) -> np.ndarray:
    """(n, m) Gaussian weights from m coarse nodes onto n pixels, rows of unit L2 norm (unit output variance)."""
    pos = (np.arange(n) + 0.5) * ((m - 3) / n) + 1.5
    w = np.exp(-0.5 * ((pos[:, None] - np.arange(m)[None, :]) / 0.65) ** 2)
    return (w / np.sqrt((w**2).sum(1, keepdims=True))).astype(np.float32)


def smooth_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Unit-variance Gaussian noise of an ``h`` x ``w`` patch, correlated over ~``scale`` pixels.

    A coarse node grid is interpolated by two small matrix products, which is far cheaper than blurring a
    full-resolution field at 1024 px.
    """
    my, mx = math.ceil(h / scale) + 3, math.ceil(w / scale) + 3
    nodes = rng.standard_normal((my, mx), dtype=np.float32)
    return _interp(h, my) @ nodes @ _interp(w, mx).T


@dataclass
class Scene:
    """Layers of one image being drawn (float32, size x size); findings add to ``overlay``."""

    size: int
    anat: Anatomy
    base: np.ndarray  # anatomy brightness
    markings: np.ndarray  # lung markings, multiplied by ``gain`` (a pneumothorax has none)
    gain: np.ndarray
    overlay: np.ndarray
    lungs: list[np.ndarray]  # soft lung fields (patient's right, left), heart excluded
    masks: dict[str, np.ndarray]
    _uv: tuple[np.ndarray, np.ndarray] | None = None

    def uv(self) -> tuple[np.ndarray, np.ndarray]:
        """Anatomy coordinates of every pixel (computed on first use: only diffuse findings need them)."""
        if self._uv is None:
            self._uv = _pose_grid(self.size, self.anat)
        return self._uv


@dataclass(frozen=True)
class Finding:
    """One finding instance to draw: label index, optional box, and its own seed."""

    cls: int
    box: Box | None
    seed: tuple[int, int, int]

    def rng(self, tag: int = 0) -> np.random.Generator:
        """An independent generator for one use (shape, side, ...) of this finding."""
        return np.random.default_rng([*self.seed, tag])

    def side(self, size: int) -> int:
        """Lung side: 0 = image left (patient's right), 1 = image right; the box's side when there is a box."""
        if self.box is not None:
            return int(self.box[0] + self.box[2] / 2 >= size / 2)
        return int(self.rng(1).integers(2))


@dataclass
class Anatomy:
    """One image's anatomy in normalised coordinates. Per-side lists are (patient's right, patient's left)."""

    rot: float
    scale: float
    shift: tuple[float, float]
    lung_top: list[float]
    lung_base: list[float]
    lung_med: list[float]
    lung_lat: list[float]
    dome: list[float]
    heart: list[float]  # cx, cy, semi-axis a (long), semi-axis b, tilt (rad, + = apex towards image bottom-right)
    lung_depth: float
    markings: float
    rib_phase: float
    gain: float
    offset: float
    gamma: float

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        """Map an anatomy point to normalised image coordinates (the inverse of the grid pose)."""
        cr, sr = math.cos(self.rot), math.sin(self.rot)
        x, y = (u - 0.5) * self.scale, (v - 0.5) * self.scale
        return 0.5 + self.shift[0] + cr * x - sr * y, 0.5 + self.shift[1] + sr * x + cr * y

    def to_anatomy(self, x: float, y: float) -> tuple[float, float]:
        """Map a normalised image point to anatomy coordinates."""
        cr, sr = math.cos(self.rot), math.sin(self.rot)
        x, y = x - 0.5 - self.shift[0], y - 0.5 - self.shift[1]
        return 0.5 + (cr * x + sr * y) / self.scale, 0.5 + (-sr * x + cr * y) / self.scale


def sample_anatomy(rng: np.random.Generator, difficulty: float) -> Anatomy:
    """Draw one normal anatomy; the spread of every parameter grows with ``difficulty``."""
    spread = 0.5 + difficulty

    def jit(sd: float) -> float:
        return float(rng.normal(0.0, sd * spread))

    base = 0.80 + jit(0.02)
    return Anatomy(
        rot=jit(0.035),
        scale=1.0 + jit(0.035),
        shift=(jit(0.012), jit(0.015)),
        lung_top=[0.135 + jit(0.01), 0.13 + jit(0.01)],
        # The right hemidiaphragm sits a little higher than the left.
        lung_base=[base - 0.02 + jit(0.008), base + jit(0.008)],
        lung_med=[0.05 + jit(0.004), 0.045 + jit(0.004)],
        lung_lat=[0.375 + jit(0.01), 0.375 + jit(0.01)],
        dome=[0.085 + jit(0.015), 0.075 + jit(0.015)],
        heart=[0.55 + jit(0.01), 0.65 + jit(0.01), 0.175 * (1 + jit(0.07)), 0.125 * (1 + jit(0.06)), 0.4 + jit(0.06)],
        lung_depth=0.34 + jit(0.03),
        markings=1.0 + jit(0.15),
        rib_phase=jit(0.15),
        gain=1.0 + jit(0.04),
        offset=jit(0.02),
        gamma=1.0 + jit(0.06),
    )


def _pose_grid(size: int, anat: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Anatomy coordinates (U, V) of every pixel centre."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    x = c[None, :] - np.float32(0.5 + anat.shift[0])
    y = c[:, None] - np.float32(0.5 + anat.shift[1])
    cr, sr, s = np.float32(math.cos(anat.rot)), np.float32(math.sin(anat.rot)), np.float32(anat.scale)
    return 0.5 + (cr * x + sr * y) / s, 0.5 + (-sr * x + cr * y) / s


def lung_field(u: np.ndarray, v: np.ndarray, anat: Anatomy, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed margin of one lung (>0 inside, ~distance) and of its lateral/apical rim alone."""
    top, base, med, lat = anat.lung_top[i], anat.lung_base[i], anat.lung_med[i], anat.lung_lat[i]
    d = _SIDES[i] * (u - 0.5)  # lateral distance from the midline, positive towards this lung
    # Lateral/apical outline: an ellipse, widest low in the chest, narrowing towards a rounded apex that sits
    # medially (the centre and the width both shrink towards the top).
    t = np.clip((v - top) / (base - top), 0.0, 1.0)
    ec = med + 0.5 * (lat - med) - 0.04 * (1.0 - t) ** 2
    ea = (0.5 * (lat - med) + 0.025) * (0.75 + 0.25 * np.sqrt(t))
    eb = 0.8 * (base - top)
    rim = (1.0 - np.sqrt(((d - ec) / ea) ** 2 + ((v - top - eb) / eb) ** 2)) * ea
    medial = d - med - 0.03 * t
    peak = med + 0.45 * (lat - med)  # the diaphragm dome's highest point
    diaphragm = base - anat.dome[i] * (1.0 - ((d - peak) / (lat - peak)) ** 2) - v
    return np.minimum(np.minimum(rim, medial), diaphragm), rim


def _heart_field(u: np.ndarray, v: np.ndarray, heart: Sequence[float]) -> np.ndarray:
    """Signed margin of the heart ellipse (>0 inside)."""
    cx, cy, a, b, tilt = heart
    x, y = u - cx, v - cy
    ct, st = math.cos(tilt), math.sin(tilt)
    xr, yr = ct * x + st * y, -st * x + ct * y
    return (1.0 - np.sqrt((xr / a) ** 2 + (yr / b) ** 2)) * b


def _body(u: np.ndarray, v: np.ndarray, edge: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft-tissue outline (torso and neck) and a thickness profile that brightens the centre."""
    r = ((np.abs(u - 0.5) / 0.47) ** 4 + (np.abs(v - 0.6) / 0.62) ** 4) ** 0.25
    torso = soft((1.0 - r) * 0.47, 3 * edge)
    neck = soft(0.11 - np.abs(u - 0.5), 3 * edge) * soft(0.2 - v, 8 * edge)
    body = np.maximum(torso, neck)
    thick = np.sqrt(np.clip(1.0 - r**2, 0.0, 1.0))
    return body, thick


def _ribs(u: np.ndarray, v: np.ndarray, anat: Anatomy) -> np.ndarray:
    """Posterior ribs (arcs from the spine, bending down at the chest wall) and fainter anterior ribs."""
    d = np.abs(u - 0.5)
    q = v - 1.6 * np.clip(d - 0.1, 0.0, None) ** 2 + 0.1 * d
    t = np.clip((q - 0.08) / 0.72, 0.0, 1.0)
    post = soft(np.cos(2 * np.pi * (9.5 * t**0.8 + anat.rib_phase)) - 0.25, 0.1) * soft(0.97 - t, 0.02)
    qa = v + 0.45 * d - 0.6 * d**2
    ta = np.clip((qa - 0.15) / 0.55, 0.0, 1.0)
    ant = soft(np.cos(2 * np.pi * (5.5 * ta**0.9 - anat.rib_phase)) - 0.55, 0.1) * soft(0.95 - ta, 0.03)
    return 0.045 * post * soft(t - 0.02, 0.01) + 0.025 * ant * soft(ta - 0.02, 0.01) * soft(d - 0.06, 0.02)


def _clavicles(u: np.ndarray, v: np.ndarray, edge: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Both clavicles as bright oblique bands; returns their brightness and per-side masks (right, left)."""
    total = np.zeros_like(u)
    masks = []
    for s in _SIDES:
        d = s * (u - 0.5) - 0.04
        centre = 0.185 - 0.3 * d + 0.45 * d**2
        half = 0.012 + 0.004 * np.clip(1.0 - d / 0.27, 0.0, 1.0)  # thicker medially
        margin = np.minimum(half - np.abs(v - centre), np.minimum(d, 0.27 - d) * 0.3)
        total += 0.11 * soft(margin, edge)
        masks.append(margin > 0)
    return total, masks


def _midline(u: np.ndarray, v: np.ndarray, anat: Anatomy) -> np.ndarray:
    """Spine (with vertebral discs), the dark tracheal air column and the hilar shadows."""
    x = np.abs(u - 0.5)
    spine = 0.05 * soft(0.035 - x, 0.006) * (1.0 - 0.35 * (0.5 + 0.5 * np.cos(2 * np.pi * v / 0.047)) ** 8)
    trachea = -0.07 * soft(0.012 - x, 0.004) * soft(0.34 - v, 0.01)
    hila = np.zeros_like(u)
    for cx, cy in ((0.5 - 0.085, 0.45), (0.5 + 0.08, 0.43)):
        hila += 0.07 * np.exp(-(((u - cx) / 0.03) ** 2 + ((v - cy) / 0.045) ** 2))
    return spine + trachea + hila


def _markings(rng: np.random.Generator, size: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vascular lung markings: a ridge network of smooth noise, strongest near the hila."""
    n = smooth_noise(rng, size, size, 0.03 * size)
    ridges = np.clip(1.0 - np.abs(n) / 0.25, 0.0, 1.0) ** 2
    hilum = np.sqrt(np.minimum((u - 0.41) ** 2 + (v - 0.45) ** 2, (u - 0.58) ** 2 + (v - 0.43) ** 2))
    return 0.08 * ridges * (0.25 + 0.75 * np.exp(-hilum / 0.12))


def _up2_rows(a: np.ndarray) -> np.ndarray:
    out = np.empty((2 * a.shape[0], a.shape[1]), a.dtype)
    out[0], out[-1] = a[0], a[-1]
    out[2::2] = 0.75 * a[1:] + 0.25 * a[:-1]
    out[1:-1:2] = 0.75 * a[:-1] + 0.25 * a[1:]
    return out


def _up2(a: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling with pixel centres kept aligned (separable)."""
    return np.ascontiguousarray(_up2_rows(np.ascontiguousarray(_up2_rows(a).T)).T)


def render(anat: Anatomy, size: int, rng: np.random.Generator) -> Scene:
    """Render the anatomy (no findings, no noise) into a :class:`Scene` with masks.

    Anatomy is smooth at the scale of a pixel, so above 128 px it is drawn at half resolution and upsampled: this
    quarters the cost; findings and noise are drawn at full resolution.
    """
    work = size // 2 if size > 128 and size % 2 == 0 else size
    u, v = _pose_grid(work, anat)
    edge = max(0.8 / work, 0.0025)
    heart = soft(_heart_field(u, v, anat.heart), edge)
    lungs = [soft(lung_field(u, v, anat, i)[0], edge) * (1.0 - heart) for i in (0, 1)]  # stop at the heart (SCR)
    lung = lungs[0] + lungs[1]
    body, thick = _body(u, v, edge)
    clav, clav_masks = _clavicles(u, v, edge)
    upper = np.clip((v - 0.1) / 0.7, 0.0, 1.0)  # lower zones are darker: less overlying muscle
    base = 0.05 + body * (0.47 + 0.2 * thick) - anat.lung_depth * lung * (0.85 + 0.25 * upper)
    base += _ribs(u, v, anat) * (0.8 * lung + 0.25 * body) + clav + _midline(u, v, anat) * body
    markings = _markings(rng, work, u, v) * anat.markings * lung
    if work != size:
        base, markings, heart = _up2(base), _up2(markings), _up2(heart)
        lungs = [_up2(x) for x in lungs]
        clav_masks = [np.repeat(np.repeat(m, 2, 0), 2, 1) for m in clav_masks]
    masks = {"heart": heart > 0.5}
    for key, field in zip(LUNG_KEYS, lungs):
        masks[key] = (field > 0.5) & ~masks["heart"]
    masks["right_clavicle"], masks["left_clavicle"] = clav_masks
    return Scene(size, anat, base, markings, np.ones_like(base), np.zeros_like(base), lungs, masks)
