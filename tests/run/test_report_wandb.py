"""launch/report.py logs its leaderboard, per-class table, localization board, paired tests and forest plot to ONE
offline W&B run under the report's folder, read back here with wandb's own reader; re-running adds no run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxrdist.run import report_wandb
from testkit.eval_runs import fake_eval_run, fake_external, fake_shards, script
from testkit.wandb_offline import leet, logged_table


def test_report_logs_one_wandb_run_and_rerunning_it_adds_none(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no W&B file may land in $HOME: every WANDB_* dir is in OUT
    env = lambda: {k: v for k, v in os.environ.items() if k.startswith("WANDB_") and k != "WANDB_SERVICE"}  # noqa: E731
    before = env()
    shards = fake_shards(tmp_path / "shards")
    a = fake_eval_run(tmp_path / "runs" / "a", shards, "chexnet", 0, 1.5, bbox=4)
    b = fake_eval_run(tmp_path / "runs" / "b", shards, "dcnn", 1, 0.3, bbox=20)
    out = tmp_path / "board"
    argv = [str(tmp_path / "runs"), "--baseline", str(b), "--out", str(out), "--resamples", "100"]
    report = script("report")
    assert report.main(argv) == 0  # both runs logged to W&B (logger=wandb, the default): so does the report
    run_id = report_wandb.report_run_id([b, a], b, 100, 0)
    assert f"W&B run {run_id} (logged)" in capsys.readouterr().out
    [folder] = out.rglob("offline-run-*")
    assert folder.name.endswith(run_id) and folder.is_relative_to(out / "wandb" / "report")
    assert not list((tmp_path / "home").rglob("*wandb*")) and not Path("wandb").exists()
    assert env() == before  # restored (WANDB_SERVICE: W&B's own service of this process)

    s = leet(folder, summary=True)
    assert s["state"] == "finished" and s["run_id"] == run_id
    assert s["summary"]["report/title"].startswith("cxrdist report — PHANTOM data")
    assert s["summary"]["report/num_runs"] == 2
    board = logged_table(folder, s, "report/leaderboard")
    assert [r[:3] for r in board["data"]] == [["chexnet", "chexnet", 1], ["dcnn", "dcnn", 1]]  # best first
    runs = logged_table(folder, s, "report/runs")
    assert runs["columns"][3:6] == ["mean_auroc", "ci_low", "ci_high"]
    assert all(r[4] <= r[3] <= r[5] for r in runs["data"])
    per_class = logged_table(folder, s, "report/per_class")
    assert len(per_class["data"]) == 2 * 14 and per_class["data"][0][:2] == ["Atelectasis", "chexnet"]
    loc = logged_table(folder, s, "report/localization")
    assert {r[2] for r in loc["data"]} >= {"acc_at_iou>0.3", "best_box_iou", "afp_at_iou>0.5"}
    [vs] = logged_table(folder, s, "report/vs_baseline")["data"]
    assert vs[0] == "a" and vs[1] > 0 and vs[2] <= vs[1] <= vs[3]
    assert s["summary"]["report/forest"]["_type"] == "image-file"
    records = leet(folder)
    assert [r["run"]["job_type"] for r in records if r["type"] == "run"] == ["report"]

    assert report.main(argv) == 0  # the same report again: the same run, nothing rebuilt
    assert f"W&B run {run_id} (unchanged)" in capsys.readouterr().out
    assert list(out.rglob("offline-run-*")) == [folder]


@pytest.mark.parametrize(("backends", "flag", "want"), [
    (["wandb", "wandb"], None, True), (["wandb", "none"], None, False), (["none"], True, True),
    (["wandb"], False, False),
])  # fmt: skip
def test_the_report_logs_to_wandb_as_its_runs_did_unless_told(backends, flag, want):
    runs = [{"cfg": {"logger": {"backend": b}}} for b in backends]
    assert report_wandb.wanted(runs, flag) is want


def test_a_wandb_failure_or_disabled_wandb_keeps_the_report_and_leaves_no_half_run(tmp_path: Path, monkeypatch, caplog):
    out = tmp_path / "board"
    out.mkdir()
    (out / "report.md").write_text("# cxrdist report\n")

    def broken(*args, **kwargs):
        (args[0] / "wandb").mkdir(parents=True)  # W&B had started writing when it failed
        raise RuntimeError("network down")

    monkeypatch.setattr(report_wandb, "_build", broken)
    logged = report_wandb.log_report([], out, "report-x")
    assert logged.folder is None and not logged.built and "network down" in caplog.text
    assert [p.name for p in (out / "wandb").iterdir() if p.name.startswith(".") or p.name == "report"] == []
    assert (out / "report.md").is_file()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert report_wandb.log_report([], out, "report-x").folder is None


def test_compare_logs_one_wandb_run_per_output_as_the_report_does(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    shards = fake_shards(tmp_path / "shards")
    a = fake_eval_run(tmp_path / "runs" / "a", shards, "chexnet", 0, 1.5)
    b = fake_eval_run(tmp_path / "runs" / "b", shards, "dcnn", 1, 0.3)
    fake_external(a, "chexpert", 1.5, 0)
    fake_external(b, "chexpert", 0.3, 1)
    out = tmp_path / "cmp"
    argv = [str(a), str(b), "--external", "chexpert", "--out", str(out), "--resamples", "100"]
    compare = script("compare")
    assert compare.main(argv) == 0  # both runs logged to W&B (the default): so does the comparison
    run_id = report_wandb.compare_run_id(a, b, "chexpert", 100, 0)
    assert f"W&B run {run_id} (logged)" in capsys.readouterr().out
    [folder] = out.rglob("offline-run-*")
    assert folder.name.endswith(run_id) and folder.is_relative_to(out / "wandb" / "compare-chexpert")
    assert not list((tmp_path / "home").rglob("*wandb*"))
    s = leet(folder, summary=True)
    assert s["state"] == "finished" and s["summary"]["compare/set"] == "chexpert"
    assert s["summary"]["compare/title"] == "a vs b (chexpert)"
    rows = logged_table(folder, s, "compare/per_class")["data"]
    assert len(rows) == 15 and rows[-1][0] == "Mean" and rows[-1][5] <= rows[-1][4] <= rows[-1][6]
    assert rows[13][0] == "Hernia" and rows[13][2] is None  # not annotated in CheXpert
    assert [r["run"]["job_type"] for r in leet(folder) if r["type"] == "run"] == ["compare"]
    assert compare.main(argv) == 0  # the same comparison again: the same run, nothing rebuilt
    assert f"W&B run {run_id} (unchanged)" in capsys.readouterr().out
    assert compare.main([*argv[:2], "--out", str(out), "--resamples", "100"]) == 0  # test set: its own run beside
    assert {p.parent.parent.name for p in out.rglob("offline-run-*")} == {"compare-chexpert", "compare"}
    capsys.readouterr()
    assert report_wandb.compare_run_id(b, a, "chexpert", 100, 0) != run_id  # Δ = A − B: order matters
    assert compare.main([*argv, "--no-wandb", "--seed", "1"]) == 0
    assert "W&B run" not in capsys.readouterr().out and len(list(out.rglob("offline-run-*"))) == 2
