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
from collections.abc import Mapping, Sequence

import numpy as np

from cxrdist.labels import NUM_LABELS
from cxrdist.phantom.anatomy import MASK_KEYS, Box, Finding, Scene, render, sample_anatomy, smooth_noise
from cxrdist.phantom.findings import draw_finding, reshape_anatomy


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
        reshape_anatomy(anat, f, size, k)
    sc = render(anat, size, np.random.default_rng(seeds[1]))
    for f in todo:
        draw_finding(sc, f, k)
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
