"""The published-vs-ours report: published localization numbers beside fixed-threshold rows only, the oracle
labelled, ``applies_to`` honoured (fang2021: the masked model only), ImageNet weights and stored size stated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxrdist.config import compose, to_container
from cxrdist.eval.classification import auroc_per_class
from cxrdist.eval.localization import evaluate_localization
from cxrdist.eval.report import write_report
from cxrdist.eval.schema import METRICS_SCHEMA


def _fake_run(tmp: Path, name: str, shards: Path, *overrides: str) -> Path:
    run = tmp / name
    cfg = to_container(compose(["method=lungheart", f"data.root={shards}", f"run_dir={run}", *overrides]))
    ev = run / "eval"
    (ev / "test").mkdir(parents=True)
    (ev / "bbox").mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    rng = np.random.default_rng(0)
    labels = (rng.random((40, 14)) > 0.7).astype(np.uint8)
    auroc = auroc_per_class(labels, rng.normal(size=(40, 14)))
    test = {"schema_version": METRICS_SCHEMA, "split": "test", "num_samples": 40, "auroc": auroc}
    (ev / "test" / "metrics.json").write_text(json.dumps(test))
    heat = np.zeros((32, 32), np.float32)
    heat[4:12, 4:12] = 1.0  # one hot region over the box, found at both thresholds
    boxes = [{"key": "a", "class_idx": 1, "x": 4, "y": 4, "w": 8, "h": 8}]
    loc = evaluate_localization({("a", 1): heat}, boxes, orig_size=32, compare_size=32, thresholds=[60, 180])
    (ev / "bbox" / "metrics.json").write_text(json.dumps({"schema_version": METRICS_SCHEMA, "localization": loc}))
    return run


def _loc_table(md: str, run: str) -> list[str]:
    section = md.split(f"## {run} ")[1].split("### Localization (bbox)")[1].split("\n## ")[0]
    return [line for line in section.splitlines() if line.startswith("| ")]


def test_published_localization_beside_fixed_thresholds_of_the_matching_model(tmp_path: Path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "_dataset.json").write_text(json.dumps({"config": {"split_scheme": "official", "size": 512}}))
    masked = _fake_run(tmp_path, "masked", shards, "method.model.pretrained=false")
    nomask = _fake_run(tmp_path, "nomask", shards, "method.model.use_mask=false")
    md = write_report([masked, nomask], tmp_path / "report").read_text()
    assert md.startswith("# cxrdist report\n")  # no label file recorded: not called a phantom

    rows = _loc_table(md, "masked")
    fang = [r for r in rows if r.startswith("| best-box IoU")]
    assert [r.split("|")[2].strip() for r in fang] == ["heatmap > 60", "heatmap > 180", "ORACLE: best threshold "
                                                       "per GT box (upper bound)"]  # fmt: skip
    assert [r.split("|")[-3].strip() for r in fang] == ["0.3014", "0.3014", "—"]  # never beside the oracle
    assert {r.split("|")[-2].strip() for r in fang} == {"fang2021"}  # the paper each number is compared with
    assert {r.split("|")[-2].strip() for r in rows if r.startswith("| accuracy at IoU")} == {"kim2021"}
    assert all(r.split("|")[-3].strip() == "—" for r in rows if "ORACLE" in r)
    assert "The published localization numbers are of another model" not in md.split("## nomask ")[0]

    nomask_rows = _loc_table(md, "nomask")
    assert all(r.split("|")[-3].strip() in ("n/a", "—") for r in nomask_rows[2:])
    tail = md.split("## nomask ")[1]
    assert "they apply to method.model.use_mask=True (this run: False)" in tail
    assert "ORACLE rows pick, for each ground-truth box" in tail
    assert "ImageNet weights: none (`model.pretrained=false`" in md.split("## nomask ")[0]
    assert "ImageNet weights: IMAGENET1K_V1, the original torchvision weights" in tail
    assert "images stored at 512 px" in md


def test_a_metrics_json_of_another_schema_is_one_clear_error(tmp_path: Path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "_dataset.json").write_text(json.dumps({"config": {"split_scheme": "official", "size": 512}}))
    run = _fake_run(tmp_path, "old", shards, "method.model.pretrained=false")
    path = run / "eval" / "test" / "metrics.json"
    old = json.loads(path.read_text())
    del old["schema_version"]  # schema 1: written before the result keys were named by what they measure
    path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"metrics.json of schema 1, this cxrdist reads schema 2.*launch/evaluate.py"):
        write_report([run], tmp_path / "report")
    assert not (tmp_path / "report").exists()
