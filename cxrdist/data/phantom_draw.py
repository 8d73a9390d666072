"""Synthetic PA chest radiographs for the phantom ChestX-ray14: anatomy, the 14 findings, lung/heart masks.

Anatomy is defined in normalised coordinates (0..1 across the image, y down) on a posed (rotated, scaled, shifted)
copy of the pixel grid, so an image has the same anatomy at any drawing size. Findings are drawn in the image's own
pixels inside a box ``(x, y, w, h)`` (the NIH box convention); a finding without a box gets a plausible one. Image
left is the patient's right (PA view): the heart shadow lies mostly on the image's right.

Each image draws from independent sub-streams (anatomy, texture, noise, one per finding), so adding a finding
changes nothing outside it except where the finding itself reshapes anatomy (Cardiomegaly, Emphysema, Atelectasis).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cxrdist.labels import LABEL_INDEX, NUM_LABELS

__all__ = ["Anatomy", "Box", "MASK_KEYS", "Scene", "draw_float", "draw_radiograph", "render", "sample_anatomy"]

Box = tuple[float, float, float, float]  # x, y, w, h in the image's own pixels (NIH convention)
MASK_KEYS = ("left_lung", "right_lung", "heart")
_LUNG_KEYS = ("right_lung", "left_lung")  # index 0 = image left (patient's right), 1 = image right
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


def _lung_field(u: np.ndarray, v: np.ndarray, anat: Anatomy, i: int) -> tuple[np.ndarray, np.ndarray]:
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
    lungs = [soft(_lung_field(u, v, anat, i)[0], edge) * (1.0 - heart) for i in (0, 1)]  # stop at the heart (SCR)
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
    for key, field in zip(_LUNG_KEYS, lungs):
        masks[key] = (field > 0.5) & ~masks["heart"]
    masks["right_clavicle"], masks["left_clavicle"] = clav_masks
    return Scene(size, anat, base, markings, np.ones_like(base), np.zeros_like(base), lungs, masks)


# --- findings ------------------------------------------------------------------------------------------------------


def _patch(size: int, box: Box) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """Pixel slices of a box clipped to the image, with pixel-centre coordinates (column, row vectors)."""
    x, y, w, h = box
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(size, math.ceil(x + w)), min(size, math.ceil(y + h))
    if x1 <= x0 or y1 <= y0 or w <= 0 or h <= 0:
        return None
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    return (slice(y0, y1), slice(x0, x1)), yy, xx


def _box_pq(box: Box, yy: np.ndarray, xx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Box-relative coordinates: p from the medial (0) to the lateral (1) edge, q from top (0) to bottom (1)."""
    x, y, w, h = box
    p = (xx - x) / w
    return (1.0 - p if x + w / 2 < size / 2 else p), (yy - y) / h


def _window(t: np.ndarray, edge: float) -> np.ndarray:
    return soft(t, edge) * soft(1.0 - t, edge)


def _sphere(yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Projected thickness of a ball (1 at the centre): the profile of a round lesion."""
    return np.sqrt(np.clip(1.0 - ((xx - cx) ** 2 + (yy - cy) ** 2) / (r * r), 0.0, None))


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a mask; the whole image when it is empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return 0, 0, mask.shape[1], mask.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _lung_box(
    sc: Scene, rng: np.random.Generator, side: int, w: float, h: float, zone: tuple[float, float] = (0.0, 1.0)
) -> Box:
    """A box of w x h (fractions of the image) centred on a random pixel of one lung within a vertical zone."""
    mask = sc.masks[_LUNG_KEYS[side]]
    x0, y0, x1, y1 = _bbox(mask)
    lo, hi = int(y0 + zone[0] * (y1 - y0)), int(math.ceil(y0 + zone[1] * (y1 - y0)))
    ys, xs = np.nonzero(mask[lo:hi])
    if ys.size:
        i = int(rng.integers(ys.size))
        cx, cy = xs[i] + 0.5, ys[i] + lo + 0.5
    else:  # drawing too small to hold a lung pixel in the zone
        cx, cy = (x0 + x1) / 2, (lo + hi) / 2
    s = sc.size
    return cx - w * s / 2, cy - h * s / 2, w * s, h * s


def _lesion(sc: Scene, box: Box, amp: float, rng: np.random.Generator, lobes: int) -> None:
    """A dense round lesion centred in the box (diameter ~70% of its smaller side), optionally lobulated."""
    got = _patch(sc.size, box)
    if got is None:
        return
    sl, yy, xx = got
    r = 0.35 * min(box[2], box[3])
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    dens = _sphere(yy, xx, cx, cy, r)
    for _ in range(lobes):  # satellite lobes stay within the main disc's extent, so inside the box
        ang, rr = rng.uniform(0, 2 * math.pi), r * rng.uniform(0.5, 0.7)
        off = (r - rr) * rng.uniform(0.6, 1.0)
        dens = np.maximum(dens, _sphere(yy, xx, cx + off * math.cos(ang), cy + off * math.sin(ang), rr))
    sc.overlay[sl] += amp * dens


def _nodule(sc: Scene, f: Finding, k: float, mass: bool = False) -> None:
    r = f.rng()
    boxes = [f.box]
    if f.box is None:
        count = 1 if mass or r.random() < 0.7 else int(r.integers(2, 4))
        lo, hi = (0.08, 0.14) if mass else (0.028, 0.045)  # lesion diameters, fraction of the image
        boxes = []
        for _ in range(count):
            d = r.uniform(lo, hi) / 0.7
            boxes.append(_lung_box(sc, r, int(r.integers(2)), d, d))
    for b in boxes:
        _lesion(sc, b, (0.14 if mass else 0.17) * k, r, 2 if mass else 0)


def _mass(sc: Scene, f: Finding, k: float) -> None:
    _nodule(sc, f, k, mass=True)


def _patchy(sc: Scene, box: Box, r: np.random.Generator, amp: float, scale: float, thresh: float | None) -> None:
    """Airspace opacity filling ~70% of the box: patchy (soft-thresholded noise) or homogeneous (thresh=None)."""
    got = _patch(sc.size, box)
    if got is None:
        return
    sl, yy, xx = got
    x, y, w, h = box
    rad = np.sqrt(((xx - x - w / 2) / (0.42 * w)) ** 2 + ((yy - y - h / 2) / (0.42 * h)) ** 2)
    n = smooth_noise(r, yy.shape[0], xx.shape[1], max(1.5, scale * sc.size))
    win = soft(1.0 - rad + 0.12 * n, 0.1)  # lumpy, soft-edged outline
    tex = 0.85 + 0.15 * n if thresh is None else soft(n - thresh, 0.3)
    lung = sc.lungs[0][sl] + sc.lungs[1][sl]  # airspace disease shows against the aerated lung
    sc.overlay[sl] += amp * win * tex * (0.3 + 0.7 * lung)


def _airspace(sc: Scene, f: Finding, k: float) -> None:
    """Infiltration (faint, fine patches), Pneumonia (larger, confluent), Consolidation (dense, homogeneous)."""
    amp, scale, thresh, size_range = {
        LABEL_INDEX["Infiltration"]: (0.11, 0.02, 0.2, (0.16, 0.28)),
        LABEL_INDEX["Pneumonia"]: (0.14, 0.045, -0.3, (0.15, 0.25)),
        LABEL_INDEX["Consolidation"]: (0.18, 0.05, None, (0.1, 0.18)),
    }[f.cls]
    r = f.rng()
    box = f.box
    if box is None:
        zone = (0.4, 1.0) if f.cls == LABEL_INDEX["Consolidation"] else (0.1, 1.0)
        box = _lung_box(sc, r, f.side(sc.size), r.uniform(*size_range), r.uniform(*size_range), zone)
    _patchy(sc, box, r, amp * k, scale, thresh)


def _atelectasis(sc: Scene, f: Finding, k: float) -> None:
    """Plate-like linear opacity (a thin tilted ellipse) in a faint haze."""
    r = f.rng()
    box = f.box or _lung_box(sc, r, f.side(sc.size), r.uniform(0.14, 0.22), r.uniform(0.06, 0.1), (0.45, 0.9))
    got = _patch(sc.size, box)
    if got is None:
        return
    sl, yy, xx = got
    x, y, w, h = box
    dx, dy = xx - x - w / 2, yy - y - h / 2
    ang = r.uniform(-1, 1) * min(0.3, 0.8 * math.atan2(0.35 * h, 0.45 * w))  # keep the plate inside the box
    along = (dx * math.cos(ang) + dy * math.sin(ang)) / (0.45 * w)
    across = (-dx * math.sin(ang) + dy * math.cos(ang)) / max(0.16 * h, 1.0)
    haze = soft(1.0 - np.sqrt((dx / (0.45 * w)) ** 2 + (dy / (0.45 * h)) ** 2), 0.1)
    sc.overlay[sl] += k * (0.12 * soft(1.0 - np.sqrt(along**2 + across**2), 0.15) + 0.04 * haze)


def _fluid(sc: Scene, box: Box, k: float) -> None:
    """Basal pleural fluid filling the box below a meniscus that climbs the lateral chest wall."""
    got = _patch(sc.size, box)
    if got is None:
        return
    sl, yy, xx = got
    p, q = _box_pq(box, yy, xx, sc.size)
    fluid = soft(q - (0.55 - 0.45 * p**2), 0.05) * _window(p, 0.03) * soft(1.0 - q, 0.03)
    lung = sc.lungs[0][sl] + sc.lungs[1][sl]  # fluid is seen against the aerated lung, hardly over soft tissue
    sc.overlay[sl] += 0.2 * k * fluid * (0.75 + 0.25 * q) * (0.25 + 0.75 * lung)


def _effusion(sc: Scene, f: Finding, k: float) -> None:
    if f.box is not None:
        _fluid(sc, f.box, k)
        return
    r = f.rng()
    for side in [f.side(sc.size)] if r.random() < 0.7 else [0, 1]:
        x0, y0, x1, y1 = _bbox(sc.masks[_LUNG_KEYS[side]])
        h = (y1 - y0) * r.uniform(0.3, 0.45)
        _fluid(sc, (x0, y1 - 0.9 * h, x1 - x0, h + 0.02 * sc.size), k)


def _pneumothorax(sc: Scene, f: Finding, k: float) -> None:
    """A thin pleural line; lateral to it the lung is darker and has no markings."""
    r, box = f.rng(), f.box
    if box is None:
        side = f.side(sc.size)
        x0, y0, x1, y1 = _bbox(sc.masks[_LUNG_KEYS[side]])
        w, h = (x1 - x0) * r.uniform(0.45, 0.65), (y1 - y0) * r.uniform(0.4, 0.7)
        box = (x1 - w if side else x0, y0, w, h)
    got = _patch(sc.size, box)
    if got is None:
        return
    sl, yy, xx = got
    p, q = _box_pq(box, yy, xx, sc.size)
    edge = 0.62 - 0.3 * (2 * q - 1) ** 2  # collapsed lung edge, convex towards the chest wall
    qwin = _window(q, 0.03)
    lucent = soft(p - edge, 0.02) * soft(1.0 - p, 0.02) * qwin
    line = np.exp(-(((p - edge) * box[2] / max(0.7, 0.0035 * sc.size)) ** 2)) * qwin
    sc.overlay[sl] += k * (0.1 * line - 0.1 * lucent)
    sc.gain[sl] *= 1.0 - lucent


def _edema(sc: Scene, f: Finding, k: float) -> None:
    """Bilateral perihilar (butterfly) haze with a little texture."""
    n = smooth_noise(f.rng(), sc.size, sc.size, 0.03 * sc.size)
    u, v = sc.uv()
    haze = np.exp(-(((u - 0.39) / 0.1) ** 2 + ((v - 0.47) / 0.13) ** 2))
    haze += np.exp(-(((u - 0.6) / 0.1) ** 2 + ((v - 0.46) / 0.13) ** 2))
    sc.overlay += 0.12 * k * haze * (0.8 + 0.2 * n) * (sc.lungs[0] + sc.lungs[1])


def _fibrosis(sc: Scene, f: Finding, k: float) -> None:
    """Reticular network of fine lines, basal and peripheral."""
    n = smooth_noise(f.rng(), sc.size, sc.size, max(1.5, 0.022 * sc.size))
    net = np.clip(1.0 - np.abs(n) / 0.25, 0.0, 1.0) ** 1.5
    u, v = sc.uv()
    where = np.clip((v - 0.25) / 0.5, 0.25, 1.0) * np.clip(np.abs(u - 0.5) / 0.3, 0.3, 1.0)
    sc.overlay += 0.2 * k * net * where * (sc.lungs[0] + sc.lungs[1])


def _pleural_thickening(sc: Scene, f: Finding, k: float) -> None:
    """A bright band inside the lateral/apical lung border over part of its height, one or both sides."""
    r = f.rng()
    u, v = sc.uv()
    for side in [f.side(sc.size)] if r.random() < 0.6 else [0, 1]:
        thick = r.uniform(0.02, 0.035)
        v0 = r.uniform(0.1, 0.45)
        span = r.uniform(0.15, 0.4)
        rim = _lung_field(u, v, sc.anat, side)[1]
        band = soft(thick - rim, 0.004) * _window((v - v0) / span, 0.1)
        sc.overlay += 0.3 * k * band * sc.lungs[side]


def _hernia(sc: Scene, f: Finding, k: float) -> None:
    """Retrocardiac round opacity at the diaphragm with an air-fluid level (hiatal hernia)."""
    r, a = f.rng(), sc.anat
    x, y = a.to_image(0.53 + r.normal(0, 0.01), a.heart[1] + 0.8 * a.heart[3] + r.normal(0, 0.01))
    rad = r.uniform(0.045, 0.065) * a.scale * sc.size
    cx, cy = x * sc.size, y * sc.size
    got = _patch(sc.size, (cx - rad, cy - rad, 2 * rad, 2 * rad))
    if got is None:
        return
    sl, yy, xx = got
    dens = _sphere(yy, xx, cx, cy, rad)
    air = soft(cy - 0.2 * rad - yy, 0.8) * np.minimum(1.0, 4.0 * dens)
    sc.overlay[sl] += k * (0.12 * dens - 0.22 * air)


def _reshape_anatomy(anat: Anatomy, f: Finding, size: int, k: float) -> None:
    """Findings that change the anatomy itself (before rendering): heart size, lung volume."""
    if f.cls == LABEL_INDEX["Cardiomegaly"]:
        _enlarge_heart(anat, f, size, k)
    elif f.cls == LABEL_INDEX["Emphysema"]:  # hyperinflated, hyperlucent lungs, flat diaphragm, narrow heart
        for i in (0, 1):
            anat.lung_base[i] += 0.02 * k
            anat.dome[i] *= 1.0 - 0.4 * k
            anat.lung_lat[i] += 0.006 * k
        anat.lung_depth += 0.015 * k
        anat.markings *= 0.7
        anat.heart[2] *= 0.95
    elif f.cls == LABEL_INDEX["Atelectasis"] and f.box is None:
        # Volume loss: raised hemidiaphragm, mediastinum pulled over. Not with a box, so that a boxed finding
        # changes nothing outside its box.
        side = f.side(size)
        anat.lung_base[side] -= 0.012
        anat.heart[0] += 0.005 if side else -0.005


def _enlarge_heart(anat: Anatomy, f: Finding, size: int, k: float) -> None:
    """Cardiomegaly: the heart ellipse fitted to the box (its image bounding box = the box), else ~1.4x wider."""
    h = anat.heart
    if f.box is None:
        r = f.rng()
        grow = 1.0 + r.uniform(0.2, 0.4) * min(k, 1.2)
        anat.heart = [h[0] + 0.015, h[1] + 0.01, h[2] * grow, h[3] * (1.0 + (grow - 1.0) * 0.5), h[4]]
        return
    x, y, w, hh = f.box
    cu, cv = anat.to_anatomy((x + w / 2) / size, (y + hh / 2) / size)
    bw, bh = w / 2 / size / anat.scale, hh / 2 / size / anat.scale
    tilt = h[4]
    c2, s2 = math.cos(tilt + anat.rot) ** 2, math.sin(tilt + anat.rot) ** 2
    # Half-extents of a tilted ellipse: bw^2 = a^2 c^2 + b^2 s^2, bh^2 = a^2 s^2 + b^2 c^2; solve for a^2, b^2.
    det = c2 - s2
    a2 = (bw * bw * c2 - bh * bh * s2) / det if det > 0.2 else -1.0
    b2 = (bh * bh * c2 - bw * bw * s2) / det if det > 0.2 else -1.0
    if a2 <= 0 or b2 <= 0:  # box too tall for the tilt: draw the heart untilted in the image
        tilt, a2, b2 = -anat.rot, bw * bw, bh * bh
    anat.heart = [cu, cv, math.sqrt(a2), math.sqrt(b2), tilt]
    # A heart box from a real film can end above this anatomy's diaphragm: raise the left hemidiaphragm to meet
    # the heart rather than leave it floating over aerated lung.
    bottom = anat.to_anatomy((x + w / 2) / size, (y + hh) / size)[1]
    med, lat = anat.lung_med[1], anat.lung_lat[1]
    peak = med + 0.45 * (lat - med)
    diaphragm = anat.lung_base[1] - anat.dome[1] * (1.0 - ((0.1 - peak) / (lat - peak)) ** 2)  # under the heart
    anat.lung_base[1] -= min(max(diaphragm - bottom - 0.01, 0.0), 0.12)


_DRAWERS = {
    LABEL_INDEX["Atelectasis"]: _atelectasis,
    LABEL_INDEX["Effusion"]: _effusion,
    LABEL_INDEX["Infiltration"]: _airspace,
    LABEL_INDEX["Mass"]: _mass,
    LABEL_INDEX["Nodule"]: _nodule,
    LABEL_INDEX["Pneumonia"]: _airspace,
    LABEL_INDEX["Pneumothorax"]: _pneumothorax,
    LABEL_INDEX["Consolidation"]: _airspace,
    LABEL_INDEX["Edema"]: _edema,
    LABEL_INDEX["Fibrosis"]: _fibrosis,
    LABEL_INDEX["Pleural_Thickening"]: _pleural_thickening,
    LABEL_INDEX["Hernia"]: _hernia,
}  # Cardiomegaly and Emphysema are drawn through the anatomy (_reshape_anatomy)
_BOX_AWARE = {LABEL_INDEX[n] for n in ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                                       "Pneumonia", "Pneumothorax")}  # fmt: skip


def _draw_finding(sc: Scene, f: Finding, k: float) -> None:
    drawer = _DRAWERS.get(f.cls)
    if drawer is not None:
        drawer(sc, f if f.cls in _BOX_AWARE else Finding(f.cls, None, f.seed), k)


def _contrast(difficulty: float) -> float:
    """Finding contrast multiplier: 1.45 (easy) .. 0.55 (hard), 1.0 at the default difficulty 0.5."""
    return 1.45 - 0.9 * difficulty


def _compose(sc: Scene, rng: np.random.Generator, difficulty: float) -> np.ndarray:
    """Sum the layers, add clutter and noise, apply the exposure curve; float image in [0, 1]."""
    size = sc.size
    img = sc.base + sc.markings * sc.gain + sc.overlay
    # Structured clutter at ~1/8 of the image and film-like grain at ~1/160 (both scale with the image, so a
    # phantom drawn at 1024 and resized to 128 is about as hard as one drawn at 128).
    img += (0.01 + 0.03 * difficulty) * smooth_noise(rng, size, size, 0.12 * size)
    grain = size / 160.0
    if grain >= 1.5:
        img += (2.0 + 8.0 * difficulty) / 255.0 * smooth_noise(rng, size, size, grain)
    img += (2.0 + 4.0 * difficulty) / 255.0 * rng.standard_normal((size, size), dtype=np.float32)
    a = sc.anat
    # Exposure curve through a 12-bit lookup table: much cheaper than a full-image power.
    levels = np.rint(np.clip(a.gain * img + a.offset, 0.0, 1.0) * 4095.0).astype(np.intp)
    return _gamma_lut(round(a.gamma, 4))[levels]


@functools.lru_cache(maxsize=64)
def _gamma_lut(gamma: float) -> np.ndarray:
    return (np.linspace(0.0, 1.0, 4096) ** gamma).astype(np.float32)


def _check_findings(findings: Mapping[int, Sequence[Box | None]]) -> None:
    for cls, boxes in findings.items():
        if not 0 <= int(cls) < NUM_LABELS:
            raise ValueError(f"finding class {cls!r} is not a label index in 0..{NUM_LABELS - 1}")
        if len(boxes) == 0:
            raise ValueError(f"finding class {cls}: give a list of boxes or [None], not an empty list")


def draw_float(
    rng: np.random.Generator, size: int, findings: Mapping[int, Sequence[Box | None]], difficulty: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Like :func:`draw_radiograph` but returns the float image in [0, 1] and all masks (clavicles too)."""
    _check_findings(findings)
    seeds = [int(s) for s in rng.integers(0, 2**62, size=4)]
    todo = [Finding(int(c), None if b is None else tuple(map(float, b)), (seeds[3], int(c), j))
            for c in sorted(findings) for j, b in enumerate(findings[c])]  # fmt: skip
    anat = sample_anatomy(np.random.default_rng(seeds[0]), difficulty)
    k = _contrast(difficulty)
    for f in todo:
        _reshape_anatomy(anat, f, size, k)
    sc = render(anat, size, np.random.default_rng(seeds[1]))
    for f in todo:
        _draw_finding(sc, f, k)
    return _compose(sc, np.random.default_rng(seeds[2]), difficulty), sc.masks


def draw_radiograph(
    rng: np.random.Generator,
    size: int,
    findings: Mapping[int, Sequence[Box | None]] | None = None,
    difficulty: float = 0.5,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw one synthetic PA chest radiograph with the given findings.

    Args:
        rng: the image's generator (e.g. ``np.random.default_rng([seed, crc32(name)])``); 4 draws are taken.
        size: width and height in pixels.
        findings: label index (``cxrdist.labels.LABELS`` order) -> one entry per instance: a box ``(x, y, w, h)``
            in this image's pixels, inside which the finding is drawn, or ``None`` for a plausible site. Boxes are
            honoured for the 8 box classes; the other 6 are diffuse or anatomical and ignore them.
        difficulty: 0..1; higher means fainter findings, more noise and more anatomical variation.

    Returns:
        ``(image, masks)``: uint8 ``(size, size)`` image and bool ``(size, size)`` masks ``left_lung`` (the
        patient's left = image right), ``right_lung`` and ``heart``; the lung masks exclude the heart.
    """
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    img, masks = draw_float(rng, int(size), findings or {}, difficulty)
    return np.rint(img * 255.0).astype(np.uint8), {k: masks[k] for k in MASK_KEYS}
