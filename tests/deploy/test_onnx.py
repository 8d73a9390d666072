"""``launch/export.py --onnx``: model.onnx through onnxruntime gives the PyTorch model's probabilities and maps, and
``cxrdist.load_model(export).predict``'s; multi-network methods and a missing onnx are refused before anything is
written. ``--backend onnx`` (``launch/predict.py``, ``load_model``): the torch backend's predictions.csv and heatmaps
from model.onnx; a tampered model.onnx, a run dir, an export without model.onnx and a missing onnxruntime are one
line before anything is written."""

from __future__ import annotations

import csv
import importlib.util
import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import cxrdist
from cxrdist.config import compose, save_config
from cxrdist.data.images import read_image
from cxrdist.data.reader import ShardReader
from cxrdist.deploy.export import export_model
from cxrdist.deploy.load import MODEL_JSON, load_model, sha256
from cxrdist.deploy.onnx_export import ONNX_FILE, OPSET
from cxrdist.engine.predictor import eval_batch
from cxrdist.labels import LABELS
from testkit.fake_runs import fake_run
from testkit.tiny_methods import method_overrides

NUM = 12  # test images; model.onnx was traced with a batch of 2, so 12 also checks the dynamic batch axis
# onnxruntime (CPU) vs PyTorch, float32 kernels that sum in another order: measured max |Δp| ≤ 4e-7 (chexnet, cral),
# maps ≤ 5e-6 of their range. Stated: probabilities 1e-5, maps 1e-4 of the largest |map|.
PROB_TOL, MAP_TOL = 1e-5, 1e-4
REPO = Path(__file__).resolve().parents[2]


# DenseNet-121 CAM; CRAL's attention maps and mean-only normalisation; lungheart's one-network ablation (its own maps)
SINGLE = [("chexnet", ()), ("cral", ()), ("lungheart", ("method.model.use_mask=false",))]


@pytest.fixture(scope="module")
def exports(shard_root: Path, phantom_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """``exports(method, extra)`` → (run dir, its ``launch/export.py --onnx`` folder), made once per module."""
    made: dict[tuple, tuple[Path, Path]] = {}

    def get(method: str, extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
        if (method, extra) not in made:
            root = tmp_path_factory.mktemp(method)
            run = fake_run(method, shard_root, phantom_root, root / "run", *extra)
            export = runpy.run_path(str(REPO / "launch" / "export.py"))["main"]
            assert export([str(run), "--out", str(root / "model"), "--onnx"]) == 0
            made[method, extra] = (run, root / "model")
        return made[method, extra]

    return get


def _test_pngs(shard_root: Path, phantom_root: Path, num: int = NUM) -> list[Path]:
    reader = ShardReader(shard_root, "test")
    return [phantom_root / "images" / reader.meta(i)["image"] for i in range(num)]


@pytest.mark.parametrize(("method", "extra"), SINGLE, ids=["chexnet", "cral", "lungheart-nomask"])
def test_onnx_equals_pytorch_and_load_model(method, extra, exports, shard_root: Path, phantom_root: Path):
    _, out = exports(method, extra)
    spec = json.loads((out / MODEL_JSON).read_text())
    entry = spec["onnx"]
    assert entry["file"] == ONNX_FILE and entry["opset"] == OPSET and entry["sha256"] == sha256(out / ONNX_FILE)
    graph = onnx.load(str(out / ONNX_FILE))
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["labels"]) == list(LABELS) and meta["cxrdist_method"] == method
    assert json.loads(meta["transforms"]) == spec["transforms"]
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    model = cxrdist.load_model(out, device="cpu")
    paths = _test_pngs(shard_root, phantom_root)
    predicted = model.predict(paths)
    stored = [model.stored(read_image(p).pixels) for p in paths]
    x, geoms = eval_batch(stored, model.transforms, torch.device("cpu"))  # the graph's input: the eval tensor
    assert list(x.shape[1:]) == entry["input"]["shape"][1:]
    session = onnxruntime.InferenceSession(str(out / ONNX_FILE), providers=["CPUExecutionProvider"])
    logits, probs, maps = session.run(None, {"image": x.numpy()})
    torch_logits, torch_maps, _ = model.forward(stored)

    assert predicted["probs"].std(axis=0).max() > 1e-4, "the images must change the output for this test to mean it"
    diff = np.abs(probs - predicted["probs"]).max()
    print(f"{method}: onnxruntime vs load_model().predict: max |Δp| {diff:.1e}")
    np.testing.assert_allclose(probs, predicted["probs"], rtol=0, atol=PROB_TOL)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(logits, torch_logits, rtol=0, atol=PROB_TOL * 10)
    scale = np.abs(torch_maps).max()
    np.testing.assert_allclose(maps, torch_maps, rtol=0, atol=MAP_TOL * scale)
    # the heatmaps predict returns are these maps pasted into the whole image
    heat = np.stack([model.full_frame(m, g, s) for m, g, s in zip(maps, geoms, stored)])
    np.testing.assert_allclose(heat, predicted["heatmaps"], rtol=0, atol=MAP_TOL * scale)
    # the onnx backend: the same predict on model.onnx (whose network is onnxruntime's session)
    onnx_model = cxrdist.load_model(out, backend="onnx")
    assert onnx_model.info["backend"] == "onnx" and type(onnx_model.model).__name__ == "OnnxGraph"
    by_onnx = onnx_model.predict(paths)
    print(f"{method}: --backend onnx vs torch: max |Δp| {np.abs(by_onnx['probs'] - predicted['probs']).max():.1e}")
    np.testing.assert_allclose(by_onnx["probs"], predicted["probs"], rtol=0, atol=PROB_TOL)
    np.testing.assert_allclose(by_onnx["heatmaps"], predicted["heatmaps"], rtol=0, atol=MAP_TOL * scale)
    np.testing.assert_array_equal(by_onnx["calls"], predicted["calls"])


def _config_only_run(method: str, shard_root: Path, phantom_root: Path, root: Path) -> Path:
    run = root / method
    run.mkdir(parents=True)
    save_config(compose(method_overrides(method, shard_root, phantom_root)), run / "config.yaml")
    return run


@pytest.mark.parametrize(("method", "why"), [("lungheart", "the mask from its seg network"), ("diseasemask", "affine")])
def test_multi_network_methods_are_refused(method: str, why: str, shard_root, phantom_root, tmp_path: Path):
    run = _config_only_run(method, shard_root, phantom_root, tmp_path)
    with pytest.raises(ValueError, match=rf"--onnx: {method}'s prediction is not one network \(.*{why}"):
        export_model(run, tmp_path / "model", onnx=True)
    assert not (tmp_path / "model").exists() and sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_onnx_missing_is_one_line_before_anything(tmp_path: Path, monkeypatch, capsys):
    export = runpy.run_path(str(REPO / "launch" / "export.py"))["main"]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    assert export([str(tmp_path / "no-run"), "--out", str(tmp_path / "model"), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--onnx needs onnx, not installed: pip install 'cxrdist[export]'" in err
    assert list(tmp_path.iterdir()) == []


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_backend_onnx_equals_torch(exports, shard_root: Path, phantom_root: Path, tmp_path: Path):
    _, model_dir = exports("chexnet")
    predict = runpy.run_path(str(REPO / "launch" / "predict.py"))["main"]
    images = [str(p) for p in _test_pngs(shard_root, phantom_root, 4)]  # 4: overlays take ~0.4 s each
    outs = {b: tmp_path / b for b in ("torch", "onnx")}
    for backend, out in outs.items():
        args = [str(model_dir), "--images", *images, "--out", str(out), "--device", "cpu", "--backend", backend]
        assert predict(args) == 0
    torch_rows, onnx_rows = _csv(outs["torch"] / "predictions.csv"), _csv(outs["onnx"] / "predictions.csv")
    labels = list(LABELS)
    assert [(r["file"], r["kind"]) for r in onnx_rows] == [(r["file"], r["kind"]) for r in torch_rows]
    probs = {
        b: np.array([[float(r[n]) for n in labels] for r in rows]) for b, rows in [("t", torch_rows), ("o", onnx_rows)]
    }
    assert probs["t"].std(axis=0).max() > 1e-4, "the images must change the output for this test to mean it"
    # the CSV's 6 decimals round each side by ≤ 5e-7 on top of the backends' ≤ 1e-7
    print(f"predictions.csv --backend onnx vs torch: max |Δp| {np.abs(probs['o'] - probs['t']).max():.1e}")
    np.testing.assert_allclose(probs["o"], probs["t"], rtol=0, atol=PROB_TOL)
    calls = [f"call_{n}" for n in labels]
    assert [[r[c] for c in calls] for r in onnx_rows] == [[r[c] for c in calls] for r in torch_rows]
    overlays = {b: sorted(p.name for p in (out / "heatmaps").iterdir()) for b, out in outs.items()}
    assert overlays["onnx"] == overlays["torch"] and overlays["torch"], "no positive call: the overlays go untested"
    with np.load(outs["torch"] / "heatmaps.npz") as t, np.load(outs["onnx"] / "heatmaps.npz") as o:
        for key in ("files", "windows", "stored_size", "labels"):
            np.testing.assert_array_equal(o[key], t[key])
        scale = np.abs(t["maps"].astype(np.float32)).max()
        # float16 storage: one float16 step (≤ 2^-10 of a value) on top of the maps' MAP_TOL
        np.testing.assert_allclose(o["maps"], t["maps"], rtol=0, atol=(MAP_TOL + 2**-10) * scale)
    summaries = {b: json.loads((out / "summary.json").read_text()) for b, out in outs.items()}
    assert summaries["onnx"]["model"]["backend"] == "onnx" and summaries["torch"]["model"]["backend"] == "torch"
    assert summaries["onnx"]["positive_calls"] == summaries["torch"]["positive_calls"]


def test_tampered_model_onnx_is_refused(exports, shard_root: Path, phantom_root: Path, tmp_path: Path, capsys):
    _, model_dir = exports("chexnet")
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    data = bytearray((copy / ONNX_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte in the middle of the file (the weights)
    (copy / ONNX_FILE).write_bytes(bytes(data))
    for backend in ("onnx", "torch"):  # one artifact: the torch backend refuses a damaged export too
        with pytest.raises(ValueError, match=r"model\.onnx: sha256 differs from model\.json's"):
            load_model(copy, backend=backend)
    predict = runpy.run_path(str(REPO / "launch" / "predict.py"))["main"]
    image = str(_test_pngs(shard_root, phantom_root, 1)[0])
    assert predict([str(copy), "--images", image, "--out", str(tmp_path / "out"), "--backend", "onnx"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_backend_onnx_refusals_are_one_line_before_anything(
    exports, shard_root: Path, phantom_root: Path, tmp_path: Path, capsys, monkeypatch
):
    run, model_dir = exports("chexnet")
    spec = json.loads((model_dir / MODEL_JSON).read_text())
    plain = tmp_path / "plain"  # what export without --onnx writes into model.json (the weights are not read)
    plain.mkdir()
    (plain / MODEL_JSON).write_text(json.dumps({k: v for k, v in spec.items() if k != "onnx"}))
    lost = tmp_path / "lost"  # model.onnx recorded but not copied
    lost.mkdir()
    (lost / MODEL_JSON).write_text(json.dumps(spec))
    predict = runpy.run_path(str(REPO / "launch" / "predict.py"))["main"]
    image = str(_test_pngs(shard_root, phantom_root, 1)[0])
    run_before = sorted(str(p) for p in run.rglob("*"))
    cases = [
        (run, "onnx", "is not an export: export it with launch/export.py RUN --out DIR --onnx"),
        (plain, "onnx", "exported without --onnx"),
        (lost, "onnx", "model.onnx is missing; copy the whole exported folder"),
        (model_dir, "tflite", "--backend tflite: choose one of torch, onnx"),
    ]
    for model, backend, message in cases:
        out = tmp_path / "out"
        assert predict([str(model), "--images", image, "--out", str(out), "--backend", backend]) == 2, message
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not out.exists()
    assert sorted(str(p) for p in run.rglob("*")) == run_before  # nothing written into the run dir
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert predict([str(model_dir), "--images", image, "--out", str(tmp_path / "out"), "--backend", "onnx"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "--backend onnx needs onnxruntime, not installed: pip install 'cxrdist[export]'" in err
    )
    assert not (tmp_path / "out").exists()
