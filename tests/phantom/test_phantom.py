"""The phantom ChestX-ray14: layout against the real metadata, determinism, findings in their boxes, seg set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrdist.data.nih import BBOX_LIST, DATA_ENTRY, TEST_LIST, TRAIN_VAL_LIST
from cxrdist.labels import BOX_CLASSES, LABEL_INDEX, normalize_label
from cxrdist.phantom.draw import draw_radiograph
from cxrdist.phantom.generate import make_phantom
from cxrdist.phantom.meta import Metadata, default_metadata_dir, load_metadata, select_images

SIZE = 64  # the session phantom's size (tests/conftest.py)
PHANTOM_IMAGES = 310  # and its number of images


@pytest.fixture(scope="module")
def meta() -> Metadata:
    return load_metadata(default_metadata_dir())


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_rows_splits_and_patients(phantom_root: Path, meta: Metadata):
    entry = _lines(phantom_root / DATA_ENTRY)
    assert entry[0] == meta.header and len(entry[0].split(",")) == 11
    names = [line.split(",")[0] for line in entry[1:]]
    assert len(names) == len(set(names)) == PHANTOM_IMAGES
    assert entry[1:] == [meta.rows[n] for n in names]  # the real rows, verbatim
    assert sorted(p.name for p in (phantom_root / "images").iterdir()) == sorted(names)
    tv, te = _lines(phantom_root / TRAIN_VAL_LIST), _lines(phantom_root / TEST_LIST)
    assert sorted(tv + te) == sorted(names)  # every image in exactly one list...
    assert set(tv) <= set(meta.train_val) and set(te) <= set(meta.test)  # ...its official one
    assert tv == [n for n in meta.train_val if n in set(tv)] and te == [n for n in meta.test if n in set(te)]
    chosen_patients = {meta.patient[n] for n in names}
    whole = {n for n, p in meta.patient.items() if p in chosen_patients}
    assert whole == set(names)  # whole patients only


def test_box_rows_are_real_boxes_scaled(phantom_root: Path, meta: Metadata):
    rows = _lines(phantom_root / BBOX_LIST)
    assert rows[0] == meta.bbox_header == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    names = {line.split(",")[0] for line in _lines(phantom_root / DATA_ENTRY)[1:]}
    want = [r for n in names for r in meta.boxes.get(n, [])]
    got = [line.split(",") for line in rows[1:]]
    assert len(got) == len(want) > 0
    key = sorted
    for g, w in zip(key(got), key(want)):
        assert g[:2] == w[:2]  # same image, same label spelling (Infiltrate)
        np.testing.assert_allclose([float(v) for v in g[2:]], [float(v) * SIZE / 1024 for v in w[2:]], rtol=1e-9)
    assert any(g[1] == "Infiltrate" for g in got)


def test_test_split_has_every_box_class(phantom_root: Path):
    test = set(_lines(phantom_root / TEST_LIST))
    per_class = defaultdict(set)
    for line in _lines(phantom_root / BBOX_LIST)[1:]:
        name, label = line.split(",")[:2]
        assert name in test
        per_class[normalize_label(label)].add(name)
    assert set(per_class) == set(BOX_CLASSES)
    summary = json.loads((phantom_root / "phantom.json").read_text())
    assert summary["box_images"] == {c: len(per_class[c]) for c in BOX_CLASSES}
    assert summary["images"] == PHANTOM_IMAGES and summary["test"] == len(test) and summary["size"] == SIZE


def test_pngs_are_8bit_gray(phantom_root: Path):
    for path in sorted((phantom_root / "images").iterdir())[:20]:
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (SIZE, SIZE)
            assert np.asarray(im).std() > 20  # a picture, not a flat field


@pytest.mark.parametrize("num", [1, 17, 250, 1000])
def test_selection_is_exact_and_whole_patients(meta: Metadata, num: int):
    names = select_images(meta, num, seed=3)
    assert len(names) == num
    patients = {meta.patient[n] for n in names}
    assert sum(1 for p in meta.patient.values() if p in patients) == num


def test_deterministic_whatever_workers_and_overwrite(tmp_path: Path):
    kw = {"num_images": 60, "size": 160, "seg_images": 2}  # > 128 px: anatomy drawn at half size and upsampled
    first = make_phantom(tmp_path / "a", seed=1, workers=1, **kw)
    other = make_phantom(tmp_path / "b", seed=2, **{**kw, "num_images": 80})
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert first.images == 60 and other.images == 80
    assert a[DATA_ENTRY] != b[DATA_ENTRY]
    shared = [k for k in a if k.endswith(".IMG")]
    assert shared and all(a[k] != b[k] for k in shared)  # same seg names, different seed -> different pixels
    # Overwriting the seed-2 phantom with seed 1 on 2 workers gives the seed-1 bytes, stale images removed.
    make_phantom(tmp_path / "b", seed=1, workers=2, **kw)
    assert _files(tmp_path / "b") == a


def test_refuses_a_foreign_folder_but_resumes_an_unfinished_one(tmp_path: Path):
    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        make_phantom(tmp_path, num_images=5, size=64, seg_images=0)
    # A run killed midway leaves its marker and partial files; a rerun overwrites them.
    killed = tmp_path / "killed"
    (killed / "images").mkdir(parents=True)
    (killed / ".phantom-unfinished").touch()
    (killed / "images" / ".00000001_000.png.tmp123").write_bytes(b"partial")
    summary = make_phantom(killed, num_images=5, size=64, seg_images=0)
    assert sorted(p.name for p in killed.iterdir()) == sorted([DATA_ENTRY, BBOX_LIST, TRAIN_VAL_LIST, TEST_LIST,
                                                               "images", "phantom.json"])  # fmt: skip
    assert len(list((killed / "images").iterdir())) == summary.images == 5


def test_metadata_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    real = default_metadata_dir()
    assert (real / f"{DATA_ENTRY}.gz").exists() or (real / DATA_ENTRY).exists()
    monkeypatch.setenv("CXRDIST_NIH_METADATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="CXRDIST_NIH_METADATA"):
        default_metadata_dir()
    monkeypatch.setenv("CXRDIST_NIH_METADATA", str(real))
    assert default_metadata_dir() == real


LOCAL_BOX = (74.0, 40.0, 30.0, 26.0)  # x, y, w, h in a 128 px image, over the patient's left lung


@pytest.mark.parametrize("name", ["Nodule", "Mass", "Infiltration", "Pneumonia", "Effusion", "Pneumothorax"])
def test_finding_lies_inside_its_box(name: str):
    size = 128
    plain, _ = draw_radiograph(np.random.default_rng(7), size, {}, 0.5)
    with_box, _ = draw_radiograph(np.random.default_rng(7), size, {LABEL_INDEX[name]: [LOCAL_BOX]}, 0.5)
    diff = np.abs(with_box.astype(float) - plain)
    x, y, w, h = (int(v) for v in LOCAL_BOX)
    inside = diff[y : y + h, x : x + w]
    assert inside.sum() >= 0.97 * diff.sum()
    assert inside.mean() > 3.0  # visible: several grey levels on average over the box


def test_cardiomegaly_heart_fills_its_box():
    size, box = 128, (40.0, 60.0, 64.0, 40.0)
    _, masks = draw_radiograph(np.random.default_rng(5), size, {LABEL_INDEX["Cardiomegaly"]: [box]}, 0.5)
    _, normal = draw_radiograph(np.random.default_rng(5), size, {}, 0.5)
    ys, xs = np.nonzero(masks["heart"])
    assert abs(xs.min() - 40) <= 2 and abs(xs.max() + 1 - 104) <= 2 and abs(ys.min() - 60) <= 2
    assert masks["heart"].sum() > 1.3 * normal["heart"].sum()


def test_draw_radiograph_masks():
    img, masks = draw_radiograph(np.random.default_rng(0), 96, {LABEL_INDEX["Effusion"]: [None]}, 0.5)
    assert img.dtype == np.uint8 and img.shape == (96, 96)
    assert set(masks) == {"left_lung", "right_lung", "heart"}
    for m in masks.values():
        assert m.dtype == bool and m.shape == (96, 96) and m.sum() > 100
    assert not (masks["heart"] & (masks["left_lung"] | masks["right_lung"])).any()
    # PA view: the patient's left lung is on the image's right.
    assert np.nonzero(masks["left_lung"])[1].mean() > 48 > np.nonzero(masks["right_lung"])[1].mean()
    with pytest.raises(ValueError):
        draw_radiograph(np.random.default_rng(0), 96, {14: [None]})


def test_segmentation_set(phantom_root: Path):
    root = phantom_root / "segmentation"
    layout = json.loads((root / "layout.json").read_text())
    assert (root / "README.txt").is_file()
    jsrt, scr = layout["jsrt"], layout["scr"]
    assert (jsrt["width"], jsrt["dtype"], jsrt["bits"], scr["width"]) == (2 * SIZE, ">u2", 12, SIZE)
    folds = scr["folds"]
    assert len(folds["fold1"]) + len(folds["fold2"]) == 8 and folds["fold1"] and folds["fold2"]
    for fold, names in folds.items():
        for name in names:
            raw = np.fromfile(root / jsrt["dir"] / f"{name}.IMG", dtype=">u2")
            assert raw.size == jsrt["width"] * jsrt["height"] and raw.max() <= 4095 and raw.std() > 100
            masks = {}
            for structure in scr["structures"]:
                with Image.open(root / scr["dir"] / fold / "masks" / structure / f"{name}.gif") as im:
                    masks[structure] = np.asarray(im.convert("L"))
                assert masks[structure].shape == (SIZE, SIZE)
                assert set(np.unique(masks[structure])) == {0, 255}
            heart = masks["heart"] > 0
            for side in ("left lung", "right lung"):
                assert (heart & (masks[side] > 0)).sum() <= 0.05 * heart.sum()


def test_cli(tmp_path: Path):
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    args = ["--out", str(tmp_path / "p"), "--num-images", "12", "--size", "64", "--seg-images", "2"]
    done = subprocess.run([sys.executable, str(repo / "launch" / "make_phantom.py"), *args],
                          capture_output=True, text=True, env=env, cwd=repo, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "phantom: 12 images of 64 px" in done.stdout and "segmentation: 2 images" in done.stdout
    assert json.loads((tmp_path / "p" / "phantom.json").read_text())["images"] == 12
