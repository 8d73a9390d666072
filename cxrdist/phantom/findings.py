"""The phantom's findings: one drawer per label, each inside its box when the box list has one."""

from __future__ import annotations

import math

import numpy as np

from cxrdist.labels import LABEL_INDEX
from cxrdist.phantom.anatomy import LUNG_KEYS, Anatomy, Box, Finding, Scene, lung_field, smooth_noise, soft

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
    mask = sc.masks[LUNG_KEYS[side]]
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
        x0, y0, x1, y1 = _bbox(sc.masks[LUNG_KEYS[side]])
        h = (y1 - y0) * r.uniform(0.3, 0.45)
        _fluid(sc, (x0, y1 - 0.9 * h, x1 - x0, h + 0.02 * sc.size), k)


def _pneumothorax(sc: Scene, f: Finding, k: float) -> None:
    """A thin pleural line; lateral to it the lung is darker and has no markings."""
    r, box = f.rng(), f.box
    if box is None:
        side = f.side(sc.size)
        x0, y0, x1, y1 = _bbox(sc.masks[LUNG_KEYS[side]])
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
        rim = lung_field(u, v, sc.anat, side)[1]
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


def reshape_anatomy(anat: Anatomy, f: Finding, size: int, k: float) -> None:
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
}  # Cardiomegaly and Emphysema are drawn through the anatomy (reshape_anatomy)
_BOX_AWARE = {LABEL_INDEX[n] for n in ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                                       "Pneumonia", "Pneumothorax")}  # fmt: skip


def draw_finding(sc: Scene, f: Finding, k: float) -> None:
    drawer = _DRAWERS.get(f.cls)
    if drawer is not None:
        drawer(sc, f if f.cls in _BOX_AWARE else Finding(f.cls, None, f.seed), k)
