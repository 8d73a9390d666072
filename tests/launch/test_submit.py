"""launch/submit.py: dry-run job scripts, refusals (nothing submitted, nothing overwritten), the local path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrdist.launcher import LaunchError, submit

TINY = [
    "method.model.pretrained=false",
    "method.stages.train.epochs=1",
    "method.stages.train.max_steps_per_epoch=1",
    "method.stages.train.global_batch=8",
    "loader.workers=0",
    "logger=none",
    "eval.heatmap_examples=1",
    "method.stages.train.transforms.train=[{op: resize, size: 40}, {op: center_crop, size: 32}]",
    "method.stages.train.transforms.eval=[{op: resize, size: 40}, {op: center_crop, size: 32}]",
]


def test_dry_run_gpu_nodes(tmp_path: Path):
    out = submit(
        [
            "--dry-run",
            "--nodes",
            "4",
            "--gpus-per-node",
            "8",
            "--timeout-min",
            "600",
            "--partition",
            "gpu",
            "--run-dir",
            str(tmp_path / "r"),
            "method=chexnet",
            "data.root=/data/shards",
        ]
    )
    s = out["script"]
    for line in (
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --time=600",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --requeue",
        "#SBATCH --partition=gpu",
    ):
        assert line in s, line
    assert "method:\n  name: chexnet" in out["config"] and out["tasks"] == 8
    assert not (tmp_path / "r").exists(), "a dry run must not create the run dir"


def test_dry_run_cpu_nodes(tmp_path: Path):
    out = submit(
        [
            "--dry-run",
            "--nodes",
            "2",
            "--tasks-per-node",
            "4",
            "--cpus-per-task",
            "8",
            "--mem-gb",
            "32",
            "--run-dir",
            str(tmp_path / "r"),
            "method=dcnn",
            "data.root=/d",
        ]
    )
    s = out["script"]
    assert "#SBATCH --ntasks-per-node=4" in s and "#SBATCH --cpus-per-task=8" in s and "#SBATCH --mem=32GB" in s
    assert "gpus" not in s


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--cluster", "k8s"], "unknown cluster 'k8s'"),
        (["--nodes", "0"], "--nodes must be ≥ 1"),
        (["--cluster", "local", "--gpus-per-node", "1"], "asked of this machine, which has 0"),
        (["--cluster", "local", "--nodes", "2"], "--nodes must be 1"),
        (["method.stages.train.epoch=3"], "Key 'epoch' not in"),
        (["method=nope"], "unknown method option 'nope'"),
        (["--nodess", "2"], "unknown launcher flag"),
    ],
)
def test_refusals(tmp_path: Path, argv: list[str], match: str):
    with pytest.raises((LaunchError, ValueError), match=match):
        submit([*argv, "--run-dir", str(tmp_path / "r"), "data.root=/d"])
    assert not (tmp_path / "r").exists()


def test_slurm_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "missing.conf"))
    with pytest.raises(LaunchError, match="Slurm is unreachable|sbatch not found"):
        submit(["--cluster", "slurm", "--run-dir", str(tmp_path / "r"), "method=chexnet", "data.root=/d"])
    assert not (tmp_path / "r").exists()


def test_run_dir_of_other_method_or_config_is_refused(shard_root: Path, tmp_path: Path):
    run = tmp_path / "r"
    args = ["--cluster", "debug", "--run-dir", str(run), f"data.root={shard_root}", *TINY]
    out = submit([*args, "method=chexnet"])
    out["job"].results()
    assert (run / "stages" / "01_eval" / "DONE.json").is_file()
    before = (run / "config.yaml").read_text()
    with pytest.raises(ValueError, match="belongs to method 'chexnet', not 'dcnn'"):
        submit([*args, "method=dcnn"])
    with pytest.raises(ValueError, match="method.stages.train.optim.lr: 0.001 → 0.5"):
        submit([*args, "method=chexnet", "method.stages.train.optim.lr=0.5"])
    assert (run / "config.yaml").read_text() == before
    # Resubmitting the same config skips the finished stages.
    done = json.loads((run / "stages" / "00_train" / "DONE.json").read_text())
    submit([*args, "method=chexnet"])["job"].results()
    assert json.loads((run / "stages" / "00_train" / "DONE.json").read_text()) == done


class _FakeRun:
    def __init__(self, stdout: str):
        self.stdout = stdout


def test_wait_results_survives_a_requeue(monkeypatch: pytest.MonkeyPatch):
    """UncompletedJobError while squeue still lists the job (requeued) means wait; once it is gone, raise."""
    import submitit

    from cxrdist import launcher

    states = iter(["REQUEUED\n", "PENDING\n", "COMPLETED\n"])
    monkeypatch.setattr(launcher.subprocess, "run", lambda *a, **k: _FakeRun(next(states)))
    monkeypatch.setattr(launcher.time, "sleep", lambda s: None)
    job = object.__new__(submitit.SlurmJob)
    job._job_id, job._cancel_at_deletion = "7", False
    calls = []

    def results():
        calls.append(1)
        if len(calls) < 3:
            raise submitit.core.utils.UncompletedJobError("no result yet")
        return ["done"]

    job.results = results
    assert launcher.wait_results(job) == ["done"] and len(calls) == 3
    calls.clear()
    job.results = lambda: (calls.append(1), (_ for _ in ()).throw(submitit.core.utils.UncompletedJobError("x")))
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        launcher.wait_results(job)  # squeue now says COMPLETED: a real failure, raised
    assert len(calls) == 1
