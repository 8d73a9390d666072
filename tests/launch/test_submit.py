"""launch/submit.py: dry-run job scripts, refusals (nothing submitted, nothing overwritten), the local path."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest

from cxrdist.run.launcher import LaunchError, build_executor, parser, submit
from testkit.tiny import TINY_RUN, TINY_SIZE

REPO = Path(__file__).resolve().parents[2]

TINY = [*TINY_RUN, "eval.heatmap_examples=1", *TINY_SIZE]


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
        (["method.stages.train.epoch=3"], "unknown config key method.stages.train.epoch; did you mean"),
        (["method=nope"], "unknown method option 'nope'"),
        (["--nodess", "2"], "unknown flag --nodess; did you mean --nodes"),
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


def test_run_dir_of_other_method_or_config_is_refused(shard_root: Path, tmp_path: Path, caplog):
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
    # Keys that cannot change results may change (logged and saved), data.root included when it holds the same
    # shards (the pinned writer hash); the finished stages are still skipped.
    moved = tmp_path / "moved"
    shutil.copytree(shard_root, moved)
    free = [a.replace(f"data.root={shard_root}", f"data.root={moved}") for a in args]
    with caplog.at_level(logging.WARNING, logger="cxrdist.run.prepare"):
        submit([*free, "method=chexnet", "loader.workers=1", "engine.log_every_steps=7"])["job"].results()
    assert "resubmitted with changes that cannot change results" in caplog.text
    changes = (run / "logs" / "config-changes.log").read_text()
    assert f"data.root: '{shard_root}' → '{moved}'" in changes and "loader.workers: 0 → 1" in changes
    assert "engine.log_every_steps: 20 → 7" in changes
    saved = (run / "config.yaml").read_text()
    assert f"root: {moved}" in saved and "workers: 1" in saved
    assert json.loads((run / "stages" / "00_train" / "DONE.json").read_text()) == done
    # Other shards under data.root (another writer config hash) are refused.
    other = tmp_path / "other"
    shutil.copytree(shard_root, other)
    header = json.loads((other / "_dataset.json").read_text())
    (other / "_dataset.json").write_text(json.dumps({**header, "config_hash": "0123456789abcdef"}))
    with pytest.raises(ValueError, match=f"data.root={other} holds other shards than {moved}"):
        submit([*[a.replace(f"data.root={shard_root}", f"data.root={other}") for a in args], "method=chexnet"])


class _FakeRun:
    def __init__(self, stdout: str):
        self.stdout = stdout


def test_wait_results_survives_a_requeue(monkeypatch: pytest.MonkeyPatch):
    """UncompletedJobError while squeue still lists the job (requeued) means wait; once it is gone, raise."""
    import submitit

    from cxrdist.run import launcher

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


def _script(name: str):
    """A launch/ script as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"launch_{name}", REPO / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_local_cluster_shows_rank0_progress_and_warns_once(shard_root: Path, tmp_path: Path, capsys):
    """submit.py --cluster local waits for the job and shows rank 0's lines; a val warning is said once."""
    run = tmp_path / "r"
    argv = ["--cluster", "local", "--run-dir", str(run), f"data.root={shard_root}", *TINY, "method=chexnet"]
    assert _script("submit").main([*argv, "method.stages.train.epochs=2"]) == 0
    err = capsys.readouterr().err
    assert "train epoch 1/2: train loss" in err and "train epoch 2/2: train loss" in err, err
    assert "stage eval: done" in err, err
    state = json.loads((run / "logs" / "progress.json").read_text())
    assert state["done"] and state["n"] == state["total"]
    counts = json.loads((shard_root / "val" / "_info.json").read_text())["label_counts"]
    empty = [c for c, n in counts.items() if n == 0]
    assert empty, "the session phantom's val split has classes without positives (this test relies on it)"
    log = (run / "logs" / "rank0.log").read_text()
    for c in empty:
        assert log.count(f"train: val {c}: AUROC undefined") == 1, c  # two epochs, one warning


def test_zero_is_a_value_not_unset():
    """--max-requeues 0 means no requeue (not the config's 5); --timeout-min 0 and the like are refused."""
    from cxrdist.cli import UsageError
    from cxrdist.config import compose

    cfg = compose(["cluster=slurm", "data.root=/d"])
    args = parser().parse_args(["--max-requeues", "0", "--timeout-min", "7", "--partition", ""])
    ex = build_executor(args, Path("/tmp/unused"), 1, cfg, preview=True)
    assert ex.max_num_timeout == 0 and ex.parameters["time"] == 7 and "partition" in ex.parameters
    args = parser().parse_args([])
    ex = build_executor(args, Path("/tmp/unused"), 1, cfg, preview=True)
    assert ex.max_num_timeout == cfg.cluster.max_requeues == 5 and ex.parameters["time"] == 1440
    for flags, message in (
        (["--max-requeues", "-1"], "--max-requeues must be ≥ 0"),
        (["--cpus-per-task", "0"], "--cpus-per-task must be ≥ 1, got 0"),
        (["--mem-gb", "0"], "--mem-gb must be ≥ 1, got 0"),
        (["--tasks-per-node", "0"], "--tasks-per-node must be ≥ 1, got 0"),
        (["cluster.timeout_min=0"], "cluster.timeout_min must be ≥ 1"),
    ):
        with pytest.raises(UsageError, match=message):
            submit(["--dry-run", *flags, "data.root=/d"])


def test_dry_run_needs_no_srun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """submitit's SlurmExecutor refuses to exist without srun; the dry run's preview does not need it."""
    import shutil

    import submitit

    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    assert shutil.which("srun") is None
    with pytest.raises(RuntimeError, match="srun"):
        submitit.SlurmExecutor(folder=tmp_path / "x")
    out = submit(["--dry-run", "--nodes", "4", "--gpus-per-node", "8", "--run-dir", str(tmp_path / "r"), "method=ma"])
    assert "#SBATCH --nodes=4" in out["script"] and "srun" in out["script"]
    assert out["notes"] and "data.root=data/shards" in out["notes"][0]
    assert not (tmp_path / "r").exists()


def test_missing_imagenet_weights_refuse_the_run_before_it_exists(
    shard_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import urllib.error

    import torch

    from cxrdist.cli import UsageError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError(f"network disabled in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    run = tmp_path / "r"
    argv = ["--cluster", "local", "--run-dir", str(run), f"data.root={shard_root}", "logger=none"]
    for method, name in (("chexnet", "densenet121"), ("ma", "resnet101"), ("diseasemask", "resnet50")):
        with pytest.raises(UsageError, match=f"method {method}, model.pretrained=true: ImageNet weights for {name}"):
            submit([*argv, f"method={method}", "method.model.pretrained=true"])
    with pytest.raises(UsageError, match="ImageNet weights for resnet50"):
        submit([*argv, "method=cral", "method.model.pretrained=true", "method.model.backbone=resnet50"])
    assert not run.exists()
    # Cached weights pass without the network.
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "densenet121-a639ec97.pth").write_bytes(b"")
    from cxrdist.config import compose
    from cxrdist.methods import get_method
    from cxrdist.run.preflight import check_weights

    check_weights(get_method("chexnet")(compose(["method=chexnet", "data.root=/d"])))


def _corrupt_first_sample_of_rank(shards: Path, rank: int, world: int, batch_per_rank: int) -> str:
    """Overwrite (same size) the JPEG of the first training sample ``rank`` reads; return its key."""
    from cxrdist.data.reader import ShardReader
    from cxrdist.data.sampler import TrainSampler, base_indices

    reader = ShardReader(shards, "train")
    sampler = TrainSampler(
        base_indices(len(reader)), world_size=world, rank=rank, batch_per_rank=batch_per_rank, seed=0
    )
    index = int(sampler.remaining_batches()[0][0][0])
    ref = reader.refs[index]
    with open(reader.tars[ref.shard], "r+b") as f:
        f.seek(ref.jpg[0])
        f.write(b"\x00" * ref.jpg[1])
    return reader.keys[index]


def test_first_failing_rank_is_reported_and_the_run_dir_is_held(shard_root: Path, tmp_path: Path):
    """--cluster local, 2 tasks: rank 1 reads a corrupt JPEG. While the job lives a second submission to its run
    dir is refused naming it; rank 1's traceback is in rank1.log; rank 0 and the launcher name rank 1's DataError
    (not the gloo hang-up rank 0 saw); the job's end releases the run dir."""
    from cxrdist.run import rundir
    from cxrdist.run.launcher import failure_summary, wait_results

    shards = tmp_path / "shards"
    shutil.copytree(shard_root, shards)
    key = _corrupt_first_sample_of_rank(shards, rank=1, world=2, batch_per_rank=4)
    run = tmp_path / "r"
    args = ["--cluster", "local", "--tasks-per-node", "2", "--run-dir", str(run), f"data.root={shards}", *TINY]
    first = submit([*args, "method=chexnet"])
    with pytest.raises(rundir.RunDirBusy, match=rf"{run} is in use by local job {first['job_id']} \(pid"):
        submit([*args, "method=chexnet", "loader.workers=1"])
    with pytest.raises(Exception) as err:
        wait_results(first["job"])
    line = failure_summary(run, err.value, first["submitted"])
    assert line.startswith("rank 1 failed: DataError: ") and f"{key}: undecodable JPEG" in line, line
    assert f"(traceback: {run}/logs/rank1.log)" in line
    rank1 = (run / "logs" / "rank1.log").read_text()
    assert "Traceback (most recent call last)" in rank1 and "DataError" in rank1
    rank0 = (run / "logs" / "rank0.log").read_text()
    assert f"rank 1 failed: DataError: {shards}" in rank0 and "rank 0 stopped because of it" in rank0
    assert "rank 1 failed: DataError" in str(err.value)  # --wait raises rank 0's error, which names rank 1's
    assert rundir.read_lock(run) is None


def test_submit_main_prints_the_first_failure(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path):
    from cxrdist.run import rundir

    run = tmp_path / "r"
    (run / "logs").mkdir(parents=True)
    (run / "attempts.jsonl").write_text('{"attempt": 1}\n')
    rundir.record_error(run, 1, 0, RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:1234"))
    rundir.record_error(run, 1, 1, ValueError("bad sample"))
    script = {"main": _script("submit").main}

    def failing_wait(job):
        raise RuntimeError("task 0 failed")

    out = {"job_id": "7", "tasks": 2, "run_dir": str(run), "wandb": "none", "follow": [], "wait": True, "job": None}
    out |= {"submitted": 0.0, "follows": False}
    monkeypatch.setitem(script["main"].__globals__, "submit", lambda argv: out)
    monkeypatch.setitem(script["main"].__globals__, "wait_results", failing_wait)
    assert script["main"]([]) == 1
    err = capsys.readouterr().err
    assert f"job 7 failed: rank 1 failed: ValueError: bad sample (traceback: {run}/logs/rank1.log)" in err
