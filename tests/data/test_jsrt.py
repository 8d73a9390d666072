"""The JSRT + SCR reader on files written in the real formats, and on the phantom's segmentation set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrdist.data.format import DataError
from cxrdist.data.jsrt import STRUCTURES, detect_layout, load_segmentation_set, read_jsrt_image, split_set


def _write_img(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    values.astype(">u2").tofile(path)  # JSRT: raw big-endian 16-bit words, no header


def _write_gif(path: Path, mask: np.ndarray, palette: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:  # SCR's GIFs are palette images: index 1 = white structure
        im = Image.fromarray(mask.astype(np.uint8), mode="P")
        im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    else:
        im = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    im.save(path, format="GIF")


def _real_release(root: Path, side: int = 32) -> dict[str, dict[str, np.ndarray]]:
    """Two images in the real layout (fold1 and fold2), masks at half the image size, known content."""
    truth = {}
    for n, (name, fold) in enumerate([("JPCLN001", "fold1"), ("JPCNN001", "fold2")]):
        raw = (np.arange(side * side).reshape(side, side) * 4 + n) % 4096  # 12-bit ramp
        _write_img(root / "JSRT" / "All247images" / f"{name}.IMG", raw)
        masks = {}
        half = side // 2
        for k, structure in enumerate(STRUCTURES + ("left clavicle",)):
            m = np.zeros((half, half), dtype=bool)
            m[2 + k : 6 + k, 1 + 3 * k : 4 + 3 * k] = True
            _write_gif(root / "SCR" / "scratch" / fold / "masks" / structure / f"{name}.gif", m, palette=n == 0)
            masks[structure] = m
        truth[name] = {"raw": raw, **masks}
    return truth


def test_real_layout_reads_raw_12bit_big_endian_and_scr_gifs(tmp_path: Path):
    truth = _real_release(tmp_path, side=32)
    assert detect_layout(tmp_path).side is None and not detect_layout(tmp_path).phantom
    sset = load_segmentation_set(tmp_path, 16)  # the masks' own size: the masks come back unchanged
    assert sset.names == ["JPCLN001", "JPCNN001"] and sset.folds == ["fold1", "fold2"]
    assert sset.images.shape == (2, 16, 16) and sset.masks.shape == (2, 3, 16, 16)
    for i, name in enumerate(sset.names):
        for c, structure in enumerate(STRUCTURES):  # channel order: left lung, right lung, heart
            assert np.array_equal(sset.masks[i, c].astype(bool), truth[name][structure]), (name, structure)
    full = read_jsrt_image(tmp_path / "JSRT" / "All247images" / "JPCLN001.IMG")  # side inferred from the size
    expect = np.rint((4095 - truth["JPCLN001"]["raw"]) * 255 / 4095)  # dense (0) is white, like the NIH PNGs
    assert full.dtype == np.uint8 and np.array_equal(full, expect.astype(np.uint8))


def test_real_size_image_is_2048_square(tmp_path: Path):
    path = tmp_path / "JPCLN002.IMG"
    _write_img(path, np.full((2048, 2048), 4095))
    img = read_jsrt_image(path)
    assert img.shape == (2048, 2048) and img.max() == 0


def test_bad_files_are_named(tmp_path: Path):
    _real_release(tmp_path)
    (tmp_path / "SCR" / "scratch" / "fold2" / "masks" / "heart" / "JPCNN001.gif").unlink()
    with pytest.raises(DataError, match="heart/JPCNN001.gif: SCR mask missing"):
        load_segmentation_set(tmp_path, 16)
    bad = tmp_path / "odd.IMG"
    _write_img(bad, np.zeros(10))
    with pytest.raises(DataError, match="odd.IMG: 20 bytes"):
        read_jsrt_image(bad)
    _write_img(bad, np.full((4, 4), 5000))
    with pytest.raises(DataError, match="exceeds 12 bits"):
        read_jsrt_image(bad)
    with pytest.raises(DataError, match="no \\*.IMG images"):
        load_segmentation_set(tmp_path / "nowhere", 16)


def test_phantom_segmentation_set(phantom_root: Path):
    root = phantom_root / "segmentation"
    lay = detect_layout(root)
    assert lay.phantom and lay.side == 128  # the phantom writes 2 x its 64 px size, like JSRT's 2048 vs 1024
    sset = load_segmentation_set(root, 32)
    assert len(sset.names) == 8 and set(sset.folds) == {"fold1", "fold2"}
    xs = np.arange(32)
    centre = [(sset.masks[:, c].sum(axis=(0, 1)) * xs).sum() / sset.masks[:, c].sum() for c in range(3)]
    assert centre[0] > 16 > centre[1]  # the patient's left lung lies on the image's right (PA view)
    assert (sset.masks[:, :2].sum(1) <= 1).all()  # the lungs do not overlap
    assert 90 < sset.images.mean() < 200  # dense = white after the 12-bit inversion


def test_split_is_seeded_and_disjoint():
    train, val = split_set(40, 0.2, seed=0)
    assert len(val) == 8 and not set(train) & set(val) and len(train) + len(val) == 40
    assert np.array_equal(split_set(40, 0.2, seed=0)[1], val) and not np.array_equal(split_set(40, 0.2, 1)[1], val)
