"""External evaluation: AUROC over the annotated classes, and a chexnet trained on the NIH phantom evaluated on the
three external phantoms through launch/evaluate.py, with the report's external section."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrdist.data.external.labelmap import annotated_classes
from cxrdist.data.writer import WriterConfig, write_dataset
from cxrdist.eval.external import external_section_md, masked_auroc, masked_bootstrap_mean
from cxrdist.labels import LABELS
from cxrdist.phantom.external import make_external_phantom

REPO = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "launch" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_masked_auroc_scores_known_labels_only():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(40, 3))
    scores = rng.standard_normal((40, 3))
    mask = np.ones((40, 3), dtype=np.uint8)
    mask[:10, 0] = 0  # uncertain under U-Ignore
    mask[:, 2] = 0  # not annotated in this set
    labels[:10, 0] = 1 - labels[:10, 0]  # masked labels must not matter
    got = masked_auroc(labels, scores, mask, ["a", "b", "c"])
    assert got["per_class"]["a"] == pytest.approx(roc_auc_score(labels[10:, 0], scores[10:, 0]))
    assert got["per_class"]["b"] == pytest.approx(roc_auc_score(labels[:, 1], scores[:, 1]))
    assert got["per_class"]["c"] is None and got["not_annotated"] == ["c"]
    assert got["mean"] == pytest.approx(np.mean([got["per_class"]["a"], got["per_class"]["b"]]))
    assert got["annotated_samples"] == {"a": 30, "b": 40, "c": 0}
    lo, hi = got["ci95"]["a"]
    assert lo < got["per_class"]["a"] < hi and got["ci95"]["c"] is None
    with pytest.raises(ValueError, match="mask must have the labels' shape"):
        masked_auroc(labels, scores, mask[:, :2], ["a", "b", "c"])


def test_masked_bootstrap_is_g5s_bootstrap_when_nothing_is_masked_and_ignores_masked_labels():
    from cxrdist.eval.bootstrap import bootstrap_auroc

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=(60, 3))
    scores = labels + rng.standard_normal((60, 3))
    patients = rng.integers(0, 25, size=60)
    ref = bootstrap_auroc(labels, scores, patients, num_resamples=200, seed=3)
    got = masked_bootstrap_mean(labels, scores, np.ones_like(labels), patients, num_resamples=200, seed=3)
    assert got["estimate"] == pytest.approx(ref.estimate) and got["ci95"] == pytest.approx([ref.ci_low, ref.ci_high])
    mask = np.ones_like(labels)
    mask[:, 2] = 0
    flipped = labels.copy()
    flipped[:, 2] = 1 - flipped[:, 2]
    two = masked_bootstrap_mean(labels, scores, mask, patients, num_resamples=200, seed=3)
    assert two == masked_bootstrap_mean(flipped, scores, mask, patients, num_resamples=200, seed=3)
    assert two["estimate"] == pytest.approx(np.mean(ref.per_class[:2]))


def test_external_section_marks_absent_classes_and_shared_mean():
    def metrics(per: dict, absent: list[str]) -> dict:
        defined = [v for v in per.values() if v is not None]
        return {"auroc": {"per_class": per, "mean": float(np.mean(defined)), "not_annotated": absent,
                          "num_samples": 5}}  # fmt: skip

    nih = metrics(dict.fromkeys(LABELS, 0.8) | {"Hernia": 0.6}, [])
    ext = metrics({c: (0.7 if c in ("Effusion", "Edema") else None) for c in LABELS},
                  [c for c in LABELS if c not in ("Effusion", "Edema")])  # fmt: skip
    md = external_section_md(nih, {"chexpert": ext})
    assert "| Hernia | 0.6000 | n/a |" in md and "| Effusion | 0.8000 | 0.7000 |" in md
    ext["auroc"]["ci95"] = {"Edema": [0.5, 0.9]}
    assert "| Edema | 0.8000 | 0.7000 [0.50, 0.90] |" in external_section_md(nih, {"chexpert": ext})
    assert "| **mean (shared 2)** | 0.8000 | 0.7000 |" in md


def test_chexnet_from_the_nih_phantom_on_three_external_phantoms(shard_root: Path, tmp_path: Path, capsys, monkeypatch):
    from cxrdist.run.launcher import submit

    run = tmp_path / "run"
    crop = "[{op: resize, size: 40}, {op: center_crop, size: 32}]"
    tiny = ["method.model.pretrained=false", "method.stages.train.epochs=1",
            "method.stages.train.max_steps_per_epoch=1", "method.stages.train.global_batch=8",
            "loader.workers=0", "logger=none", "eval.splits=[test]",
            f"method.stages.train.transforms.train={crop}", f"method.stages.train.transforms.eval={crop}"]  # fmt: skip
    submit(["--cluster", "debug", "--run-dir", str(run), f"data.root={shard_root}", *tiny, "method=chexnet"])[
        "job"
    ].results()
    evaluate = _script("evaluate")
    for ds in ("chexpert", "mimic", "padchest"):
        make_external_phantom(tmp_path / ds, ds, patients=14, size=48, seed=2)
        cfg = WriterConfig(nih_root=str(tmp_path / ds), out=str(tmp_path / f"{ds}-s"), size=48, dataset=ds)
        write_dataset(cfg, progress=False)
        assert evaluate.main([str(run), "--shards", str(tmp_path / f"{ds}-s")]) == 0
        m = json.loads((run / "eval" / "external" / ds / "test" / "metrics.json").read_text())
        assert m["dataset"] == ds and m["auroc"]["not_annotated"] == [c for c in LABELS if c not in
                                                                     annotated_classes(ds)]  # fmt: skip
        assert m["auroc"]["num_samples"] == m["num_samples"] > 0
        assert m["auroc"]["bootstrap"]["estimate"] == pytest.approx(m["auroc"]["mean"])
    assert evaluate.main([str(run), "--shards", str(tmp_path / "padchest-s"), "--split", "bbox"]) == 2
    assert "split(s) bbox hold no samples" in capsys.readouterr().err
    assert evaluate.main([str(run), "--shards", str(tmp_path / "none")]) == 2
    assert f"--shards {tmp_path / 'none'}: no such folder" in capsys.readouterr().err
    _distinct_shard_sets_get_distinct_dirs(run, tmp_path, evaluate, capsys, monkeypatch)
    assert _script("report").main([str(run), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "### External validation (test AUROC)" in md
    assert "| class | NIH test | chexpert | chexpert-32px | chexpert_uncertain-ones | mimic | padchest |" in md
    assert "| Infiltration |" in md and "| n/a | n/a |" in md


def _distinct_shard_sets_get_distinct_dirs(run: Path, tmp: Path, evaluate, capsys, monkeypatch) -> None:
    """CheXpert U-Ones beside U-Ignore; the same shard set again: the same dir; another set under a taken name:
    refused (one line, nothing written) until --name; the W&B keys follow the dir's name."""
    from cxrdist.log import Tracker
    from cxrdist.run.preflight import check_eval_request

    ext = run / "eval" / "external"
    before = (ext / "chexpert" / "test" / "metrics.json").read_bytes()
    prefixes: list[str] = []
    monkeypatch.setattr(Tracker, "log", lambda self, metrics, step, prefix="run": prefixes.append(prefix))
    write_dataset(WriterConfig(nih_root=str(tmp / "chexpert"), out=str(tmp / "ones"), size=48, dataset="chexpert",
                               uncertain="ones"), progress=False)  # fmt: skip
    assert evaluate.main([str(run), "--shards", str(tmp / "ones")]) == 0
    m = json.loads((ext / "chexpert_uncertain-ones" / "test" / "metrics.json").read_text())
    assert m["shards"] == str(tmp / "ones") and prefixes == ["eval/external/chexpert_uncertain-ones"]
    assert (ext / "chexpert" / "test" / "metrics.json").read_bytes() == before
    check_eval_request(run, ["test"], None, 1, str(tmp / "chexpert-s"))  # the same set again: its own dir, allowed
    write_dataset(WriterConfig(nih_root=str(tmp / "chexpert"), out=str(tmp / "small"), size=32, dataset="chexpert"),
                  progress=False)  # fmt: skip
    capsys.readouterr()
    assert evaluate.main([str(run), "--shards", str(tmp / "small")]) == 2
    err = capsys.readouterr().err
    assert f"{ext / 'chexpert'} holds the evaluation of another shard set ({tmp / 'chexpert-s'})" in err
    assert "--name chexpert_size-32" in err and len(err.strip().splitlines()) == 1
    assert (ext / "chexpert" / "test" / "metrics.json").read_bytes() == before
    for bad, says in ((["--name", "../x"], "--name '../x': use 1-100 letters"), (["--name", "x"], "give --shards too")):
        assert evaluate.main([str(run), *(["--shards", str(tmp / "small")] if "/" in bad[1] else []), *bad]) == 2
        assert says in capsys.readouterr().err
    assert sorted(p.name for p in ext.iterdir()) == ["chexpert", "chexpert_uncertain-ones", "mimic", "padchest"]
    assert evaluate.main([str(run), "--shards", str(tmp / "small"), "--name", "chexpert-32px"]) == 0
    assert prefixes[-1] == "eval/external/chexpert-32px" and (ext / "chexpert-32px" / "test" / "metrics.json").is_file()
