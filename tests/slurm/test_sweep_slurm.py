"""launch/submit.py -m on the real local 2-node Slurm cluster (marked ``slurm``): 2 methods × 2 seeds as ONE
Slurm job array, every element in its own run dir, then the sweep's leaderboard."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_local_cluster import Cluster, cluster  # noqa: F401  (the module-scoped cluster fixture)

from testkit.tiny import TINY_RUN, TINY_SIZE

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]
TINY = [*TINY_RUN, "eval.splits=[test]", *TINY_SIZE]


def test_sweep_is_one_slurm_array_with_a_leaderboard(cluster: Cluster, shard_root: Path, tmp_path: Path, capsys):  # noqa: F811
    spec = importlib.util.spec_from_file_location("launch_submit_sweep_slurm", REPO / "launch" / "submit.py")
    submit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(submit)
    root = tmp_path / "sw"
    argv = ["--cluster", "slurm", "--nodes", "1", "--tasks-per-node", "1", "--partition", "debug",
            "--timeout-min", "20", "--wait", "--run-dir", str(root), "-m", "method=chexnet,dcnn", "seed=0,1",
            f"data.root={shard_root}", *TINY]  # fmt: skip
    assert submit.main(argv) == 0
    out = capsys.readouterr().out
    ids = out.split("submitted a job array of 4 (")[1].split(")")[0].split(", ")
    array = {i.split("_")[0] for i in ids}
    assert len(array) == 1 and sorted(i.split("_")[1] for i in ids) == ["0", "1", "2", "3"], ids  # ONE array job
    for d in ("method=chexnet,seed=0", "method=chexnet,seed=1", "method=dcnn,seed=0", "method=dcnn,seed=1"):
        assert (root / d / "stages" / "01_eval" / "DONE.json").is_file(), d
        assert not (root / d / "lock.json").exists()
    md = (root / "report" / "report.md").read_text()
    board = md.split("## Leaderboard (test)")[1].split("![forest plot]")[0]
    assert "| chexnet | 2 | 0, 1 |" in board and "| dcnn | 2 | 0, 1 |" in board
