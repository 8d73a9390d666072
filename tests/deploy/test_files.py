"""launch/predict.py's outputs on a folder of PNG, DICOM and bad files; export → predict without the run dir."""

from __future__ import annotations

import csv
import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cxrdist
from cxrdist.data.images import read_image
from cxrdist.data.reader import ShardReader
from cxrdist.deploy import load as deploy_load
from cxrdist.deploy.export import export_model
from cxrdist.deploy.files import predict_files
from cxrdist.deploy.load import MODEL_JSON, WEIGHTS, load_model
from testkit.dicom_variants import report_dataset, write_dataset, write_dicom
from testkit.fake_runs import fake_run

DICOM_VARIANTS = ("mono2", "mono1", "rescale12", "jpeg_lossless")  # the four; tests/data has all eight
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(shard_root: Path, phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lungheart (the U-Net mask computed per image) with random networks."""
    return fake_run("lungheart", shard_root, phantom_root, tmp_path_factory.mktemp("lungheart") / "run")


@pytest.fixture(scope="module")
def inputs(shard_root: Path, phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """png/: three test PNGs; dicom/: the first as DICOM in four encodings; bad/: a truncated PNG, a report
    DICOM without pixels, a text file."""
    root = tmp_path_factory.mktemp("inputs")
    reader = ShardReader(shard_root, "test")
    pngs = sorted(phantom_root / "images" / reader.meta(i)["image"] for i in range(3))
    for sub in ("png", "dicom", "bad"):
        (root / sub).mkdir()
    for p in pngs[1:]:
        shutil.copy(p, root / "png" / p.name)
    # The first PNG stretched to 0..255: a DICOM without a VOI window is shown min-max (cxrdist/data/images.py), so
    # only an image that spans the range is "the same image" in both formats without a window.
    gray = read_image(pngs[0]).pixels.astype(np.float64)
    gray = np.round((gray - gray.min()) * 255 / (gray.max() - gray.min())).astype(np.uint8)
    Image.fromarray(gray).save(root / "png" / pngs[0].name)
    for v in DICOM_VARIANTS:
        write_dicom(root / "dicom" / f"{v}.dcm", gray, v)
    (root / "bad" / "truncated.png").write_bytes(pngs[1].read_bytes()[:200])
    write_dataset(root / "bad" / "report.dcm", report_dataset())
    (root / "bad" / "notes.txt").write_text("not an image\n")
    return root


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "predictions.csv", newline="") as f:
        return {Path(r["file"]).name: r for r in csv.DictReader(f)}


def _tree(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_folder_of_png_dicom_and_bad_files(run: Path, inputs: Path, tmp_path: Path):
    model = load_model(run, device="cpu")
    before = _tree(inputs)
    out = tmp_path / "out"
    summary = predict_files(model, [str(inputs)], out, batch_size=4, progress=False)
    assert _tree(inputs) == before  # nothing written into the input folder
    assert (summary["files"], summary["predicted"], summary["skipped"]) == (10, 7, 3)
    rows = _rows(out)
    first = sorted((inputs / "png").iterdir())[0].name
    calls = [f"call_{n}" for n in model.labels]
    for v in DICOM_VARIANTS:  # the same pixels as DICOM: the same probabilities (up to float32 batch order)
        probs = [float(rows[f"{v}.dcm"][n]) - float(rows[first][n]) for n in model.labels]
        assert np.abs(probs).max() <= 1e-5, v
        assert [rows[f"{v}.dcm"][c] for c in calls] == [rows[first][c] for c in calls], v
        assert rows[f"{v}.dcm"]["kind"] == "dicom"
    with open(out / "skipped.csv", newline="") as f:
        skipped = {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}
    assert set(skipped) == {"truncated.png", "report.dcm", "notes.txt"}
    assert "Pixel Data" in skipped["report.dcm"] and "text" in skipped["notes.txt"]
    overlays = sorted(p.name for p in (out / "heatmaps").iterdir())
    expected = [
        f"{'__'.join(Path(r['file']).relative_to(inputs).parts)}_{n}.png"
        for r in rows.values()
        for n in model.labels
        if r[f"call_{n}"] == "1"
    ]
    assert overlays == sorted(expected) and len(overlays) == summary["positive_calls"] > 0
    with np.load(out / "heatmaps.npz") as z:
        assert z["maps"].shape[:2] == (7, 14) and z["windows"].shape == (7, 4)
        assert sorted(Path(f).name for f in z["files"]) == sorted(rows)
    # the API: a path, its pixels as an array, and as grey RGB give one answer
    png = inputs / "png" / first
    pixels = read_image(png).pixels
    api = model.predict([png, pixels, np.repeat(pixels[..., None], 3, axis=2), inputs / "bad" / "notes.txt"])
    assert api["names"] == [str(png), "array[1]", "array[2]"] and len(api["skipped"]) == 1
    np.testing.assert_allclose(api["probs"], np.repeat(api["probs"][:1], 3, axis=0), rtol=0, atol=1e-6)
    assert abs(api["probs"][0] - [float(rows[first][n]) for n in model.labels]).max() <= 1e-5


def test_out_must_be_new_and_outside_the_inputs(run: Path, inputs: Path, tmp_path: Path):
    main = runpy.run_path(str(REPO / "launch" / "predict.py"))["main"]
    assert main([str(run), "--images", str(inputs), "--out", str(inputs / "png" / "out")]) == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main([str(run), "--images", str(inputs), "--out", str(tmp_path / "full")]) == 2
    assert main([str(tmp_path), "--images", str(inputs), "--out", str(tmp_path / "new")]) == 2  # not a model
    assert not (inputs / "png" / "out").exists() and not (tmp_path / "new").exists()
    export = runpy.run_path(str(REPO / "launch" / "export.py"))["main"]
    assert export([str(tmp_path / "no-run"), "--out", str(tmp_path / "model")]) == 2  # no such run dir
    assert export([str(run), "--out", str(tmp_path / "full")]) == 2  # not an empty folder
    assert export([str(run), "--out", str(tmp_path / "model"), "--stage", "nope"]) == 2  # no such stage
    assert main([str(run), "--stage", "seg", "--images", str(inputs), "--out", str(tmp_path / "new")]) == 2  # U-Net
    assert not (tmp_path / "model").exists()


def test_export_predicts_the_same_without_run_dir(run: Path, inputs: Path, tmp_path: Path, monkeypatch):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    export = export_model(copy, tmp_path / "model")
    shutil.rmtree(copy)
    spec = json.loads((export / MODEL_JSON).read_text())
    assert spec["method"] == "lungheart" and spec["labels"] == load_model(run).labels
    assert spec["thresholds"]["rule"] == "youden_j" and spec["provenance"]["shards"]["config_hash"]
    assert spec["transforms"]["eval"] and spec["aux"][0]["sidecar"] == "mask"
    assert (export / WEIGHTS).read_bytes()[8:9] == b"{"  # safetensors: an 8-byte length, then a JSON header
    from_run = predict_files(load_model(run, device="cpu"), [str(inputs)], tmp_path / "a", progress=False)

    def refuse(*a, **k):
        raise AssertionError("an exported model must not read shards or evaluate")

    monkeypatch.setattr(deploy_load, "read_json", refuse)
    monkeypatch.setattr(deploy_load, "evaluate_run", refuse)
    model = cxrdist.load_model(export, device="cpu")
    from_export = predict_files(model, [str(inputs)], tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "predictions.csv").read_text() == (tmp_path / "b" / "predictions.csv").read_text()
    with np.load(tmp_path / "a" / "heatmaps.npz") as a, np.load(tmp_path / "b" / "heatmaps.npz") as b:
        np.testing.assert_array_equal(a["maps"], b["maps"])
    assert from_run["positive_calls"] == from_export["positive_calls"]


def test_export_from_another_version_or_damaged_is_refused(run: Path, tmp_path: Path):
    export = export_model(run, tmp_path / "model")
    spec = json.loads((export / MODEL_JSON).read_text())
    (export / MODEL_JSON).write_text(json.dumps(spec | {"cxrdist_version": "9.0.0"}))
    with pytest.raises(ValueError, match=r"exported by cxrdist 9\.0\.0 .*export the run again"):
        load_model(export)
    (export / MODEL_JSON).write_text(json.dumps(spec))
    data = bytearray((export / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (export / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 differs"):
        load_model(export)
    with pytest.raises(ValueError, match="not an empty folder"):
        export_model(run, export)
