"""The augmentation draw: counter-based uniforms and the vectorised op chain (windows + flips per batch)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from cxrdist.data.transforms import (
    SampleGeometry,
    _mix,
    sample_geometries,
    sample_geometry,
    sample_uniforms,
    uniform_columns,
)

TRAIN_OPS = [{"op": "resize", "size": 256}, {"op": "random_resized_crop", "size": 224}, {"op": "hflip"}]


def draw(ops: list[dict], positions: np.ndarray, src=(300, 260), seed: int = 7, epoch: int = 2) -> list:
    u = sample_uniforms(seed, epoch, positions, uniform_columns(ops))
    return sample_geometries(ops, np.full((len(positions), 2), src), u)


def test_uniforms_pure_in_range_and_silent():
    """Each row is a function of (seed, epoch, position) alone; [0, 1), sane moments; no NumPy overflow warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # uint64 wrap-around must stay silent, for any seed/epoch (negative seed too)
        u = sample_uniforms(3, 1, np.arange(100_000), 2)
        big = sample_uniforms(-1, 2**64 - 1, np.array([2**62, 0]), 4)
    assert u.shape == (100_000, 2) and u.dtype == np.float64 and big.shape == (2, 4)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.01 and abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.01
    order = np.random.default_rng(0).permutation(100_000)[:500]
    assert np.array_equal(sample_uniforms(3, 1, order, 2), u[order])  # any batch, any order: the same rows
    for other in (sample_uniforms(4, 1, np.arange(50), 2), sample_uniforms(3, 2, np.arange(50), 2), u[50:100]):
        assert not np.isclose(other, u[:50]).any()  # another seed, epoch or position: other draws
    with pytest.raises(ValueError, match="positions must be >= 0"):
        sample_uniforms(0, 0, np.array([3, -1]), 2)
    zero = np.zeros(1, dtype=np.uint64)  # the hash step is SplitMix64's: its first output from state 0
    assert int(_mix(zero, zero)[0]) == 0xE220A8397B1DCDAF


def test_window_is_the_same_in_any_batch():
    """A sample's window and flip depend on its position alone: shuffled, split into other batches, or drawn alone."""
    positions = np.arange(40, 104)
    ref = draw(TRAIN_OPS, positions)
    perm = np.random.default_rng(1).permutation(len(positions))
    shuffled = draw(TRAIN_OPS, positions[perm])
    assert [ref[k] for k in perm] == shuffled
    assert draw(TRAIN_OPS, positions[:5]) + draw(TRAIN_OPS, positions[5:]) == ref
    u = sample_uniforms(7, 2, np.array([41]), uniform_columns(TRAIN_OPS))[0]
    assert sample_geometry(TRAIN_OPS, (300, 260), u) == ref[1]
    assert len(set(ref)) == len(ref)  # positions differ: windows differ
    assert draw(TRAIN_OPS, positions, epoch=3) != ref and draw(TRAIN_OPS, positions, seed=8) != ref
    assert all(isinstance(v, int) for g in ref for v in g)  # plain Python ints/bools (DALI, PIL, slicing)


def reference_rrc(u: np.ndarray, fw: float, fh: float, scale, ratio) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop for one sample, written as a plain loop over the same uniforms."""
    for t in range(10):
        target = fw * fh * (scale[0] + (scale[1] - scale[0]) * u[2 * t])
        r = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[2 * t + 1])
        w, h = math.sqrt(target * r), math.sqrt(target / r)
        if 0 < w <= fw and 0 < h <= fh:
            return u[20] * (fw - w), u[21] * (fh - h), w, h
    side = min(fw, fh)
    return (fw - side) / 2, (fh - side) / 2, side, side


def reference_geometry(u: np.ndarray, src: tuple[int, int], resize: int, size: int, scale, ratio, p: float):
    """[resize, random_resized_crop, hflip] for one sample: the window in source pixels, rounded, and the flip."""
    cx, cy, cw, ch = reference_rrc(u, resize, resize, scale, ratio)
    sx, sy = src[0] / resize, src[1] / resize
    x, y, w, h = cx * sx, cy * sy, cw * sx, ch * sy
    x0, y0 = round(x), round(y)
    x1, y1 = min(round(x + w), src[0]), min(round(y + h), src[1])
    return SampleGeometry(x0, y0, max(x1 - x0, 1), max(y1 - y0, 1), size, bool(u[22] < p), False), (cw, ch)


RRC_CASES = [((0.08, 1.0), (3 / 4, 4 / 3), 0.5), ((0.5, 1.0), (0.2, 5.0), 0.3), ((1.5, 2.0), (1, 1), 1)]


@pytest.mark.parametrize(("scale", "ratio", "p"), RRC_CASES)
def test_rrc_equals_a_one_sample_reference(scale, ratio, p):
    """The vectorised RandomResizedCrop equals torchvision's loop on the same uniforms, area and ratio in bounds;
    a scale above 1 never fits, so every sample takes the fallback (the centred square)."""
    ops = [{"op": "resize", "size": 64}, {"op": "random_resized_crop", "size": 32, "scale": scale, "ratio": ratio},
           {"op": "hflip", "p": p}]  # fmt: skip
    src, n = (320, 256), 2000
    u = sample_uniforms(11, 0, np.arange(n), uniform_columns(ops))
    got = sample_geometries(ops, np.full((n, 2), src), u)
    refs = [reference_geometry(row, src, 64, 32, scale, ratio, p) for row in u]
    assert got == [g for g, _ in refs]
    frames = np.array([wh for _, wh in refs])
    fallback = (frames == 64).all(1)
    area, aspect = frames.prod(1) / 64**2, frames[:, 0] / frames[:, 1]
    fitted = ~fallback
    assert (area[fitted] >= scale[0] - 1e-9).all() and (area[fitted] <= scale[1] + 1e-9).all()
    assert (aspect[fitted] >= ratio[0] - 1e-9).all() and (aspect[fitted] <= ratio[1] + 1e-9).all()
    if scale[0] > 1:
        assert fallback.all() and set(got) == {SampleGeometry(0, 0, 320, 256, 32, True, False)}
    else:
        assert fitted.mean() > 0.5 and len(set(got)) > n // 2
        assert abs(np.mean([g.flip for g in got]) - p) < 0.05


def test_translate_shift_and_clamp():
    """random_translate_crop: an integer shift uniform in [-s, s] per axis, clamped to keep the crop in the frame."""
    ops = [{"op": "random_translate_crop", "size": 90, "max_shift": 4}]
    got = draw(ops, np.arange(3000), src=(100, 100))
    # centre 5 ± 4 → 1..9, each about as often, and the crop of 90 fits 0..10: nothing clamped
    counts = np.bincount([g.x0 for g in got], minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 3000 / 9 * 0.7 and {g.w for g in got} == {90}
    # a 98 crop (centre 1) shifted by -4..4 is clamped to 0..2
    tight = draw([{"op": "random_translate_crop", "size": 98, "max_shift": 4}], np.arange(500), src=(100, 100))
    assert {g.x0 for g in tight} == {0, 1, 2} and {g.y0 for g in tight} == {0, 1, 2}


def test_eval_geometry_is_the_centre_crop():
    """u None (evaluation): centre crops, no flip — hard expectations (the geometry before the batched draw)."""
    ops = [{"op": "resize", "size": 256}, {"op": "center_crop", "size": 224}]
    assert sample_geometry(ops, (512, 400)) == SampleGeometry(32, 25, 448, 350, 224, False, False)
    assert sample_geometry([{"op": "center_crop", "size": 224}], (255, 255)) == SampleGeometry(
        16, 16, 224, 224, 224, False, False
    )  # 15.5 rounds half to even (16), and so does the far edge (239.5 → 240)
    rrc = [{"op": "random_resized_crop", "size": 150}, {"op": "hflip", "p": 1.0}]
    assert sample_geometry(rrc, (300, 200)) == SampleGeometry(75, 25, 150, 150, 150, False, False)
    near = [{"op": "resize_nearest", "size": 64}, {"op": "random_translate_crop", "size": 60, "max_shift": 3}]
    assert sample_geometries(near, np.array([[128, 128], [64, 32]]), None) == [
        SampleGeometry(4, 4, 120, 120, 60, False, True),
        SampleGeometry(2, 1, 60, 30, 60, False, True),
    ]


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="center_crop of 224 px from a 200×256 frame"):
        sample_geometries([{"op": "center_crop", "size": 224}], np.array([[256, 256], [200, 256]]), None)
    with pytest.raises(ValueError, match="random_translate_crop of 90 px from a 80×80 frame"):
        draw([{"op": "random_translate_crop", "size": 90, "max_shift": 2}], np.arange(3), src=(80, 80))
    with pytest.raises(ValueError, match="non-square 300×260 frame"):
        draw([{"op": "hflip"}], np.arange(3))
    with pytest.raises(ValueError, match=r"uniforms of shape \(2, 3\), expected \(2, 23\)"):
        sample_geometries(TRAIN_OPS, np.full((2, 2), 256), np.zeros((2, 3)))
    assert uniform_columns(TRAIN_OPS) == 23 and uniform_columns([{"op": "center_crop", "size": 4}]) == 0
