"""launch/submit.py -m: Hydra multirun overrides as ONE job array (dry run, refusals before anything is created,
2 methods × 2 seeds through --cluster local with its leaderboard)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import yaml

from cxrdist.config import compose, save_config
from cxrdist.run.sweep import expand, override_dirname
from testkit.tiny import TINY_RUN, TINY_SIZE

REPO = Path(__file__).resolve().parents[2]
TINY = [*TINY_RUN, "eval.heatmap_examples=1", "eval.splits=[test]", *TINY_SIZE]


def _submit():
    spec = importlib.util.spec_from_file_location("launch_submit_sweep", REPO / "launch" / "submit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_expand_is_the_cartesian_product_in_hydra_order():
    out = expand(["data.root=/d", "method=ma,cral", "seed=range(0,2)", "x=[1,2]"])
    assert [values for _, values in out] == [
        {"method": "ma", "seed": "0"}, {"method": "ma", "seed": "1"},
        {"method": "cral", "seed": "0"}, {"method": "cral", "seed": "1"},
    ]  # fmt: skip
    assert out[1][0] == ["data.root=/d", "x=[1,2]", "method=ma", "seed=1"]
    assert override_dirname(out[2][1]) == "method=cral,seed=0"


def test_dry_run_prints_one_array_and_creates_nothing(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--nodes", "1", "--gpus-per-node", "8", "--dry-run", "-m", "method=ma,cral", "seed=0,1", "data.root=/d"]
    assert _submit().main(argv) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --array=0-3%4" in out and "#SBATCH --gpus-per-node=8" in out
    assert "#SBATCH --job-name=cxrdist-sweep" in out
    for d in ("method=ma,seed=0", "method=ma,seed=1", "method=cral,seed=0", "method=cral,seed=1"):
        assert f"→ {tmp_path}/runs/sweep/{d}" in out
    assert "# note: not checked by --dry-run" in out  # data.root=/d
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "argv, match",
    [
        (["method=chexnet,dcnn"], "method=chexnet,dcnn sweeps several values: add -m (--multirun)"),
        (["-m", "seed=1"], "-m (--multirun) without a swept override"),
        (["-m", "method=dcnn,chexnte"], "unknown method option 'chexnte'; did you mean chexnet?"),
        (["-m", "seed=0,1", "method.stages.train.epohcs=1"], "did you mean method.stages.train.epochs"),
        (["-m", "seed=0,1", "method=[a"], "cannot parse the overrides"),
        (["-m", "seed=0,1", "cluster.timeout_min=10,20"], "cluster.timeout_min (10 vs 20) differs between sweep"),
    ],
)
def test_mistakes_are_one_line_before_anything_exists(tmp_path: Path, capsys, argv: list[str], match: str):
    root = tmp_path / "sw"
    assert _submit().main(["--cluster", "local", "--run-dir", str(root), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("submit.py: ") and match in err[0], err
    assert not root.exists()


def test_an_element_of_another_config_refuses_the_whole_sweep(shard_root: Path, tmp_path: Path, capsys):
    root = tmp_path / "sw"
    old = root / "seed=1"
    old.mkdir(parents=True)
    cfg = compose(["method=dcnn", f"data.root={shard_root}"])
    cfg.run_dir = str(old)
    save_config(cfg, old / "config.yaml")
    argv = ["--cluster", "local", "--run-dir", str(root), "-m", "seed=0,1", f"data.root={shard_root}", *TINY]
    assert _submit().main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{old} belongs to method 'dcnn', not 'chexnet'" in err[0], err
    assert sorted(p.name for p in root.iterdir()) == ["seed=1"]  # seed=0 was never created, nothing submitted


def test_local_sweep_of_two_methods_and_two_seeds_ends_with_its_leaderboard(
    shard_root: Path, tmp_path: Path, capsys
):  # fmt: skip
    root = tmp_path / "runs" / "sw"
    argv = ["--cluster", "local", "--run-dir", str(root), "-m", "method=chexnet,dcnn", "seed=0,1",
            f"data.root={shard_root}", *TINY]  # fmt: skip
    assert _submit().main(argv) == 0
    out = capsys.readouterr().out
    assert "4 runs on this machine, one after another" in out and "sweep finished; leaderboard written to" in out
    dirs = ["method=chexnet,seed=0", "method=chexnet,seed=1", "method=dcnn,seed=0", "method=dcnn,seed=1"]
    for d in dirs:
        saved = yaml.safe_load((root / d / "config.yaml").read_text())
        assert f"method={saved['method']['name']},seed={saved['seed']}" == d
        assert (root / d / "stages" / "01_eval" / "DONE.json").is_file()
        assert not (root / d / "lock.json").exists()  # each element gave its run dir back
    for before, after in zip(dirs, dirs[1:]):  # one after another: the next run dir is taken when one has ended
        done = (root / before / "stages" / "01_eval" / "DONE.json").stat().st_mtime
        assert (root / after / "attempts.jsonl").stat().st_mtime >= done, (before, after)
    md = (root / "report" / "report.md").read_text()
    board = md.split("## Leaderboard (test)")[1].split("![forest plot]")[0]
    rows = {
        r.split("|")[1].strip(): r for r in board.splitlines() if r.startswith("| chexnet") or r.startswith("| dcnn")
    }
    assert set(rows) == {"chexnet", "dcnn"} and all(r.split("|")[3].strip() == "0, 1" for r in rows.values())
    assert md.startswith("# cxrdist report — PHANTOM data")
    assert (root / "report" / "forest.png").is_file()
    metrics = json.loads((root / dirs[0] / "stages" / "01_eval" / "test" / "metrics.json").read_text())
    lo, hi = metrics["intervals"]["mean"]["bootstrap"]
    assert lo <= metrics["auroc"]["mean"] <= hi
    # The same sweep again resumes every element: nothing is trained twice, the leaderboard is rewritten.
    assert _submit().main(argv) == 0
    log = (root / dirs[0] / "logs" / "rank0.log").read_text()
    assert "attempt 2" in log and log.count("train epoch 1/1: train loss") == 1
