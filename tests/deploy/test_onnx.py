"""``launch/export.py --onnx``: model.onnx through onnxruntime gives the PyTorch model's probabilities and maps, and
``cxrdist.load_model(export).predict``'s; multi-network methods and a missing onnx are refused before anything is
written."""

from __future__ import annotations

import importlib.util
import json
import runpy
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
from cxrdist.deploy.load import MODEL_JSON, sha256
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


@pytest.mark.parametrize(("method", "extra"), SINGLE, ids=["chexnet", "cral", "lungheart-nomask"])
def test_onnx_equals_pytorch_and_load_model(method, extra, shard_root: Path, phantom_root: Path, tmp_path: Path):
    run = fake_run(method, shard_root, phantom_root, tmp_path / "run", *extra)
    out = tmp_path / "model"
    assert runpy.run_path(str(REPO / "launch" / "export.py"))["main"]([str(run), "--out", str(out), "--onnx"]) == 0
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
    reader = ShardReader(shard_root, "test")
    paths = [phantom_root / "images" / reader.meta(i)["image"] for i in range(NUM)]
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
