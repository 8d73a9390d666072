"""Intervals in the report, the leaderboard across runs and seeds, and launch/compare.py, on fake run dirs with
saved predictions (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cxrdist.eval.bootstrap import bootstrap_class_means
from cxrdist.eval.classification import auroc_per_class
from cxrdist.eval.compare import (
    auroc_intervals,
    localization_intervals,
    paired_comparison,
    paired_localization,
    patients_of,
)
from cxrdist.eval.leaderboard import find_runs, group_runs, run_labels
from cxrdist.eval.report import load_runs, write_report
from testkit.eval_runs import PATIENTS, fake_shards
from testkit.eval_runs import fake_eval_run as _fake_run
from testkit.eval_runs import fake_localization as _loc
from testkit.eval_runs import fixed_test_set as _data
from testkit.eval_runs import script as _script


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """A fake shard root written from a phantom (its label file is not the release's)."""
    return fake_shards(tmp_path / "shards")


def test_leaderboard_groups_seeds_labels_by_path_and_tests_against_a_baseline(tmp_path: Path, shards: Path):
    sweep = tmp_path / "runs" / "sweep"
    for method, signal in (("chexnet", 1.5), ("dcnn", 0.3)):
        for seed in (0, 1):
            _fake_run(sweep / f"method={method},seed={seed}", shards, method, seed, signal)
    other = _fake_run(tmp_path / "runs" / "other" / "method=chexnet,seed=0", shards, "chexnet", 5, 1.5, bbox=4)
    base = sweep / "method=dcnn,seed=0"
    md = write_report([sweep, other], tmp_path / "report", baseline=base, num_resamples=200).read_text()

    assert md.startswith("# cxrdist report — PHANTOM data")
    board = md.split("## Leaderboard (test)")[1].split("![forest plot]")[0]
    rows = [r for r in board.splitlines() if r.startswith("| chexnet") or r.startswith("| dcnn")]
    assert [r.split("|")[1].strip() for r in rows] == ["chexnet", "dcnn"]  # best first; 3 chexnet runs, one group
    assert rows[0].split("|")[2].strip() == "3" and rows[0].split("|")[3].strip() == "0, 1, 5"
    assert " ± " in rows[0].split("|")[4]
    # two runs named method=chexnet,seed=0 in different folders keep apart: labels are their shortest unique paths
    assert "sweep/method=chexnet,seed=0:" in rows[0] and "other/method=chexnet,seed=0:" in rows[0]
    assert "method=chexnet,seed=1:" in rows[0]
    loc = md.split("### Localization (bbox, fixed thresholds, 95% patient-bootstrap CIs)")[1].split("###")[0]
    loc_rows = [r for r in loc.splitlines() if r.startswith("| other/")]
    assert [r.split("|")[2].strip() for r in loc_rows] == ["heatmap > 60", "heatmap > 180"]  # that run only
    assert "fang2021 best-box IoU" in loc and "Wang AFP@IoU>0.3" in loc and loc_rows[0].count("[") == 7
    section = md.split("## other/method=chexnet,seed=0 ")[1].split("\n## ")[0]
    afp = [r for r in section.splitlines() if r.startswith("| average FP at IoU > 0.5 | heatmap > 60 |")]
    assert len(afp) == 1 and afp[0].split("|")[5].strip().startswith("[") and "Wang et al. 2017" in afp[0]
    paired = md.split("### Paired tests against the baseline")[1].split("\n## ")[0]
    assert "Baseline: **method=dcnn,seed=0**" in paired
    lines = [r for r in paired.splitlines() if r.startswith("| ") and "chexnet" in r]
    assert len(lines) == 3 and all(float(r.split("|")[2]) > 0.1 for r in lines)  # chexnet's signal is stronger
    assert all(float(r.split("|")[4]) < 0.05 for r in lines)
    # per-run sections carry both intervals and the 'inside?' answer against the published numbers
    section = md.split("## sweep/method=chexnet,seed=0 ")[1].split("\n## ")[0]
    assert "95% CI, patient bootstrap" in section and "95% CI, DeLong (images independent)" in section
    assert "inside?" in section and "of 40 patients" in section or "patients" in section
    assert not (tmp_path / "report" / "roc_method=chexnet_seed=1.png").exists()  # one ROC figure per entry
    for png in ("forest.png", "report.png", "roc_sweep_method=chexnet_seed=0.png", "roc_method=dcnn_seed=0.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000, png


def test_runs_of_one_method_with_other_settings_stay_apart(tmp_path: Path, shards: Path):
    runs = [_fake_run(tmp_path / "a", shards, "chexnet", 0, 1.0)]
    runs.append(_fake_run(tmp_path / "b", shards, "chexnet", 0, 1.0))
    cfg = yaml.safe_load((runs[1] / "config.yaml").read_text())
    cfg["method"]["stages"]["train"]["lr"] = 0.5
    (runs[1] / "config.yaml").write_text(yaml.safe_dump(cfg))
    groups = group_runs(load_runs(runs, num_resamples=50))
    assert [len(g["runs"]) for g in groups] == [1, 1]
    assert groups[1]["label"] == "chexnet (stages.train.lr=0.5)"


def test_find_runs_and_labels(tmp_path: Path, shards: Path):
    a = _fake_run(tmp_path / "x" / "s0", shards, "chexnet", 0, 1.0)
    b = _fake_run(tmp_path / "y" / "s0", shards, "chexnet", 1, 1.0)
    assert find_runs([tmp_path / "x", b, a]) == [a, b]  # a folder of runs, a run dir, a duplicate dropped
    assert run_labels([a, b]) == ["x/s0", "y/s0"]
    with pytest.raises(FileNotFoundError, match="no such run dir"):
        find_runs([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="not a cxrdist run dir"):
        find_runs([tmp_path / "x" / "s0" / "eval"])


def test_patients_from_saved_ids_nih_names_or_images():
    ids, how = patients_of(["00000003_000", "00000003_001", "00000010_000"])
    assert ids.tolist() == [3, 3, 10] and "NIH image names" in how
    ids, how = patients_of(["a", "b"], [7, 7])
    assert ids.tolist() == [7, 7] and "saved" in how
    ids, how = patients_of(["a", "b"])
    assert ids.tolist() == [0, 1] and "each image resampled alone" in how


def test_identical_runs_compare_to_zero_with_p_1():
    labels, pids, _ = _data()
    scores = np.random.default_rng(1).normal(size=labels.shape) + labels
    c = paired_comparison(labels, scores, scores, pids, num_resamples=100)
    assert c["mean"]["delta"] == 0 and c["mean"]["p"] == 1
    assert all(r["delta"] == 0 and r["p"] == 1 and r["p_holm"] == 1 for r in c["per_class"].values())


def test_paired_localization_identical_and_worse():
    good, patient = _loc(4)
    bad, _ = _loc(20)
    same = paired_localization(good, good, patient, num_resamples=200)
    assert all(r["delta"] == 0 and r["p"] == 1 for figs in same.values() for r in figs.values())
    diff = paired_localization(good, bad, patient, num_resamples=200)["60"]["best_box_iou"]
    assert diff["delta"] == pytest.approx(
        good["best_box_iou"]["60"]["mean_over_boxes"] - bad["best_box_iou"]["60"]["mean_over_boxes"]
    )
    assert diff["delta"] > 0 and diff["ci"][0] > 0
    moved = {**bad, "per_box": {**bad["per_box"], "key": bad["per_box"]["key"][::-1]}}
    with pytest.raises(ValueError, match="other boxes"):
        paired_localization(good, moved, patient)


def test_localization_intervals_match_the_protocol_and_cluster_by_patient():
    loc, patient = _loc(20)
    iv = localization_intervals(loc, patient, num_resamples=300)
    assert set(iv) == {"60", "180"}  # never the oracle
    for t in ("60", "180"):
        assert iv[t]["acc_at_iou>0.3"]["value"] == pytest.approx(loc["acc_at_iou"][t]["0.3"]["mean_over_classes"])
        assert iv[t]["best_box_iou"]["value"] == pytest.approx(loc["best_box_iou"][t]["mean_over_boxes"])
        lo, hi = iv[t]["best_box_iou"]["ci"]
        assert lo <= iv[t]["best_box_iou"]["value"] <= hi
    best = np.asarray(loc["per_box"]["best_iou"]["60"])
    ref = bootstrap_class_means(best, [patient[k] for k in loc["per_box"]["key"]], np.arange(30) % 3,
                                num_classes=8, average="items", num_resamples=300)  # fmt: skip
    assert iv["60"]["best_box_iou"]["ci"] == [ref.ci_low, ref.ci_high]
    with pytest.raises(ValueError, match="no patient for 1 image"):
        localization_intervals(loc, {k: v for k, v in patient.items() if k != "k0"})


def test_compare_cli_prints_writes_and_refuses_other_test_sets(tmp_path: Path, shards: Path, capsys):
    a = _fake_run(tmp_path / "a", shards, "chexnet", 0, 1.5, bbox=4)
    b = _fake_run(tmp_path / "b", shards, "dcnn", 1, 0.2, patients=False, bbox=20)  # patients from the NIH names
    compare = _script("compare")
    assert compare.main([str(a), str(b), "--resamples", "200", "--out", str(tmp_path / "cmp"), "--no-wandb"]) == 0
    out = capsys.readouterr().out
    assert "| **Mean** |" in out and "p (Holm)" in out
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["mean"]["delta"] > 0 and saved["mean"]["p"] < 0.05 and saved["num_patients"] <= PATIENTS
    assert saved["localization"]["60"]["best_box_iou"]["delta"] > 0 and "Localization (bbox, fixed thresholds" in out
    assert (tmp_path / "cmp" / "compare.md").read_text().startswith("# a vs b (test)")

    assert compare.main([str(a), str(a), "--resamples", "50", "--out", str(tmp_path / "same"), "--no-wandb"]) == 0
    same = json.loads((tmp_path / "same" / "compare.json").read_text())
    assert same["mean"]["delta"] == 0 and same["mean"]["p"] == 1
    capsys.readouterr()

    z = dict(np.load(b / "eval" / "test" / "predictions.npz"))
    gone, z["keys"] = str(z["keys"][5]), z["keys"].copy()
    z["keys"][5] = "99999999_000"
    np.savez(b / "eval" / "test" / "predictions.npz", **z)
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("compare.py: ") and f"key '{gone}' is in a but not in b" in err[0]
    z["keys"][5], z["labels"] = gone, 1 - z["labels"]
    np.savez(b / "eval" / "test" / "predictions.npz", **z)
    assert compare.main([str(a), str(b), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has other labels in the two runs" in err[0], err
    assert not (tmp_path / "bad").exists()
    assert compare.main([str(a), str(tmp_path / "nope")]) == 2
    assert "no such run dir" in capsys.readouterr().err


def test_report_cli_refuses_an_unknown_baseline(tmp_path: Path, shards: Path, capsys):
    a = _fake_run(tmp_path / "a", shards, "chexnet", 0, 1.0)
    report = _script("report")
    assert report.main([str(a), "--baseline", str(tmp_path / "zzz"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--baseline" in err[0] and "not one of the runs" in err[0]
    assert not (tmp_path / "out").exists()


def test_headline_scalars_carry_the_intervals():
    from cxrdist.engine.evaluator import _headline

    labels, pids, _ = _data()
    scores = np.random.default_rng(2).normal(size=labels.shape) + labels
    loc, patient = _loc(8)
    metrics = {"auroc": auroc_per_class(labels, scores), "localization": loc}
    metrics["intervals"] = auroc_intervals(labels, scores, pids, num_resamples=100)
    metrics["localization_intervals"] = localization_intervals(loc, patient, num_resamples=100)
    h = _headline("bbox", metrics)
    assert [h["bbox/auroc_mean_ci_low"], h["bbox/auroc_mean_ci_high"]] == metrics["intervals"]["mean"]["bootstrap"]
    box = "bbox/best_box_iou_mean_over_boxes_T60"
    assert h[f"{box}_ci_low"] <= h[box] <= h[f"{box}_ci_high"]
    assert "bbox/acc_at_iou0.3_mean_over_classes_T180_ci_high" in h
