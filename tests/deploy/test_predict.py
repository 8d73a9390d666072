"""Predict equals the evaluator: for every method, the test PNGs through ``load_model(run dir)`` give the
evaluator's probabilities — exactly when the shard's JPEG re-encode is applied too (same code path), and within
the stated tolerance without it (what launch/predict.py does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrdist.data.images import read_image
from cxrdist.data.reader import ShardReader
from cxrdist.deploy.load import load_model
from cxrdist.eval.thresholds import sigmoid
from testkit.fake_runs import METHODS, fake_run

NUM = 12  # test images compared per method
# Predict skips the shard's JPEG encode (quality 95, ≤ 7 grey levels per pixel at 64 px, see tests/data/test_images.py);
# measured on these jittered random networks: max |Δp| 4.2e-5 (dcnn) … 2.4e-4 (lungheart); on the tiny trained runs of
# tests/methods/tiny_methods.py ≤ 4.2e-4 (lungheart; 71 test images, 24 compared per method). Stated: 2e-3.
TOLERANCE = 2e-3


def _evaluator(run: Path, split: str) -> np.ndarray:
    z = np.load(next((run / "stages").glob(f"*_eval/{split}/predictions.npz")))
    return sigmoid(z["logits"])


@pytest.mark.parametrize("method", METHODS)
def test_predict_equals_evaluator(method: str, shard_root: Path, phantom_root: Path, tmp_path: Path):
    run = fake_run(method, shard_root, phantom_root, tmp_path / "run")
    expected = _evaluator(run, "test")[:NUM]
    assert expected.std(axis=0).max() > 1e-4, "the images must change the output for this test to mean anything"
    model = load_model(run, device="cpu")
    reader = ShardReader(shard_root, "test")
    pixels = [read_image(phantom_root / "images" / reader.meta(i)["image"]).pixels for i in range(NUM)]
    logits, _, _ = model.forward([model.stored(p, jpeg_quality=95) for p in pixels])  # the shard's exact pixels
    # equal up to float32 summation order (the evaluator batches 16 images, this 12): |Δp| ≤ 1e-5
    np.testing.assert_allclose(sigmoid(logits), expected, rtol=0, atol=1e-5)
    out = model.predict([phantom_root / "images" / reader.meta(i)["image"] for i in range(NUM)])
    diff = np.abs(out["probs"] - expected).max()
    print(f"{method}: predict (no JPEG) vs evaluator: max |Δp| {diff:.2e}")
    assert diff <= TOLERANCE
    assert out["heatmaps"].shape == (NUM, 14, model.compare_size, model.compare_size)
    # the operating thresholds are Youden's J on the run's own val predictions
    assert model.info["weights_stage"] and len(model.thresholds) == 14
    assert (run / "eval" / "val" / "thresholds.json").is_file()
