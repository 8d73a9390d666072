"""launch/submit.py and launch/write_shards.py --array on a real 2-node local Slurm cluster (marked ``slurm``).

chexnet (tiny) trains on 2 ranks over gloo across both slurmd, evaluates and finishes; an identical job is
requeued mid-epoch with ``scontrol requeue`` and ends with the same weights, the same W&B run id, its metrics
rows tagged by attempt and no finished stage rerun; one is requeued midway through a checkpoint save while a
second submission to its run dir is refused, one at an epoch boundary (both bit-identical, same history);
lungheart and diseasemask are requeued between stages and finish every stage with their artifacts, without
redoing the finished one; the sharding array writes the same shards as the single-process writer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_local_cluster import Cluster, cluster  # noqa: F401  (the module-scoped cluster fixture)

from cxrdist.engine.checkpoint import FAULT_ENV
from cxrdist.log import read_metrics
from cxrdist.run import wandb_sync
from cxrdist.run.launcher import submit, wait_results
from cxrdist.run.rundir import RunDirBusy, read_lock
from cxrdist.run.shards import submit_sharding
from testkit.tiny_methods import diseasemask_overrides, lungheart_overrides

pytestmark = pytest.mark.slurm
TINY = [
    "method.model.pretrained=false",
    "method.stages.train.epochs=2",
    "method.stages.train.max_steps_per_epoch=3",
    "method.stages.train.global_batch=8",
    "loader.workers=0",
    "eval.heatmap_examples=1",
    "engine.ckpt_every_steps=1",
    "engine.log_every_steps=1",
    "method.stages.train.transforms.train=[{op: resize, size: 40}, {op: random_resized_crop, size: 32}, {op: hflip}]",
    "method.stages.train.transforms.eval=[{op: resize, size: 40}, {op: center_crop, size: 32}]",
]


def _args(shards: Path, run: Path) -> list[str]:
    return [
        "--cluster",
        "slurm",
        "--nodes",
        "2",
        "--tasks-per-node",
        "1",
        "--partition",
        "debug",
        "--timeout-min",
        "20",
        "--run-dir",
        str(run),
        "method=chexnet",
        f"data.root={shards}",
        *TINY,
    ]


def _weights(run: Path) -> dict:
    return torch.load(run / "stages" / "00_train" / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference(cluster: Cluster, shard_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The uninterrupted 2-node run every requeued one is compared with."""
    ref_dir = tmp_path_factory.mktemp("slurm-ref") / "ref"
    submit(_args(shard_root, ref_dir))["job"].results()
    return ref_dir


def _wait_for(path: Path, text: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not (path.is_file() and text in path.read_text()):
        assert time.time() < deadline, f"{text!r} not in {path} after {timeout} s"
        time.sleep(0.2)


def _wait_gone(cluster: Cluster, job_id: str, timeout: float = 120) -> None:
    """Wait until the job has left the queue (its last step ended)."""
    deadline = time.time() + timeout
    while True:
        queued = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                                env=cluster.env, timeout=30)  # fmt: skip
        if queued.returncode == 0 and not queued.stdout.strip():
            return
        assert time.time() < deadline, f"job {job_id} still queued after {timeout} s: {queued.stdout.strip()}"
        time.sleep(0.3)


def _stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "attempt", "train/images_per_s")} for r in rows]


def _history(run: Path) -> list[dict]:
    return json.loads((run / "stages" / "00_train" / "DONE.json").read_text())["outputs"]["history"]


def test_two_node_training_and_requeue(cluster: Cluster, reference: Path, shard_root: Path, tmp_path: Path):  # noqa: F811
    ref_dir = reference
    assert json.loads((ref_dir / "stages" / "01_eval" / "DONE.json").read_text())["world_size"] == 2
    logs = [(ref_dir / "logs" / f"rank{r}.log").read_text() for r in (0, 1)]
    nodes = {line.split("node ")[1].split()[0] for text in logs for line in text.splitlines() if "joined gloo" in line}
    assert len(nodes) == 2, f"ranks did not run on two slurmd nodes: {nodes}"
    wandb_id = (ref_dir / "wandb_id.txt").read_text().strip()
    assert list((ref_dir / "wandb" / "wandb").glob(f"offline-run-*-{wandb_id}"))

    run = tmp_path / "requeued"
    out = submit(_args(shard_root, run))
    ckpt = run / "stages" / "00_train" / "ckpt"
    deadline = time.time() + 600
    while time.time() < deadline and not (ckpt / "step-00000002").exists():
        time.sleep(0.2)
    assert not (run / "stages" / "00_train" / "DONE.json").exists(), "train finished before the requeue"
    subprocess.run(["scontrol", "requeue", out["job_id"]], check=True, env=cluster.env, timeout=30)
    wait_results(out["job"])
    assert torch.equal(
        torch.cat([v.flatten().float() for v in _weights(ref_dir).values()]),
        torch.cat([v.flatten().float() for v in _weights(run).values()]),
    )
    rank0 = (run / "logs" / "rank0.log").read_text()
    assert "resumed train from" in rank0 and rank0.count("stage train: start") == 2
    rid = (run / "wandb_id.txt").read_text().strip()
    assert len(list((run / "wandb" / "wandb").glob(f"offline-run-*-{rid}"))) == 2
    # metrics.jsonl: both attempts' rows, tagged; read back each step once, equal to the uninterrupted run's.
    attempts = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    assert [(a["slurm_job_id"], a["slurm_restart_count"]) for a in attempts] == [(out["job_id"], 0), (out["job_id"], 1)]
    rows = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert {r["attempt"] for r in rows} == {1, 2}
    assert _stable(read_metrics(run)) == _stable(read_metrics(ref_dir))
    assert read_lock(run) is None  # released at the job's end
    # Resubmitting the finished run reruns nothing.
    again = submit(_args(shard_root, run))
    again["job"].results()
    assert (run / "logs" / "rank0.log").read_text().count("stage train: start") == 2
    # ONE consolidated W&B run (read back with wandb's reader): the requeued attempt preempted, every row once.
    result = wandb_sync.consolidate(run)
    assert [a["state"] for a in result.plan.attempts] == ["preempted", "finished", "finished"]
    inspect = [sys.executable, "-m", "wandb", "leet", "inspect", "--json"]
    summary = json.loads(subprocess.run([*inspect, "--summary", str(result.folder)], capture_output=True,
                                        text=True, check=True).stdout)  # fmt: skip
    assert summary["state"] == "finished" and summary["run_id"] == rid
    records = subprocess.run([*inspect, str(result.folder)], capture_output=True, text=True, check=True).stdout
    history = [json.loads(line)["history"]["item"] for line in records.splitlines() if '"type":"history"' in line]
    steps = [(h.get("train/step"), h.get("eval/step")) for h in history if "train/step" in h or "eval/step" in h]
    assert steps[: len(read_metrics(run))] == [(r.get("train/step"), r.get("eval/step")) for r in read_metrics(run)]
    assert [h["train/loss"] for h in history if "train/loss" in h] == [
        r["train/loss"] for r in read_metrics(run) if "train/loss" in r
    ]
    assert list((run / "wandb").rglob("offline-run-*")).count(result.folder) == 1


def test_requeue_inside_a_save_and_a_second_submission(
    cluster: Cluster,  # noqa: F811
    reference: Path,
    shard_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """The report's two cases. Rank 0 pauses midway through deleting the replaced copy of the epoch-end step's
    checkpoint: meanwhile a second submission to the run dir (at another task count) is refused naming the job;
    then ``scontrol requeue`` kills the job there, and the requeued attempt of the same job takes the run dir
    again, recovers the checkpoints and ends bit-identical to the uninterrupted run."""
    run = tmp_path / "fault"
    monkeypatch.setenv(FAULT_ENV, "pause:drop_old")  # exported by sbatch; a requeued attempt ignores it
    out = submit(_args(shard_root, run))
    monkeypatch.delenv(FAULT_ENV)
    _wait_for(run / "logs" / "rank0.log", "test fault: paused at drop_old")
    assert (run / "stages" / "00_train" / "ckpt" / ".step-00000003.old").is_dir()
    one_task = [a if a != "2" else "1" for a in _args(shard_root, run)]  # --nodes 1
    with pytest.raises(RunDirBusy, match=rf"{run} is in use by Slurm job {out['job_id']} \(pid"):
        submit(one_task)
    subprocess.run(["scontrol", "requeue", out["job_id"]], check=True, env=cluster.env, timeout=30)
    wait_results(out["job"])
    assert torch.equal(
        torch.cat([v.flatten().float() for v in _weights(reference).values()]),
        torch.cat([v.flatten().float() for v in _weights(run).values()]),
    )
    assert _history(run) == _history(reference)
    rank0 = (run / "logs" / "rank0.log").read_text()
    assert "SIGTERM: Slurm is ending this attempt" in rank0 and "removed .step-00000003.old" in rank0
    assert _stable(read_metrics(run)) == _stable(read_metrics(reference))
    assert read_lock(run) is None


def test_requeue_at_the_epoch_boundary(
    cluster: Cluster,  # noqa: F811
    reference: Path,
    shard_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    """Requeued after epoch 0's last-step checkpoint, before its validation (DenseNet: BatchNorm on 2 nodes):
    history (train loss, validation) and weights equal the uninterrupted run's."""
    run = tmp_path / "boundary"
    monkeypatch.setenv(FAULT_ENV, "pause:epoch_end")
    out = submit(_args(shard_root, run))
    monkeypatch.delenv(FAULT_ENV)
    _wait_for(run / "logs" / "rank0.log", "test fault: paused at epoch_end")
    subprocess.run(["scontrol", "requeue", out["job_id"]], check=True, env=cluster.env, timeout=30)
    wait_results(out["job"])
    assert _history(run) == _history(reference)
    assert torch.equal(
        torch.cat([v.flatten().float() for v in _weights(reference).values()]),
        torch.cat([v.flatten().float() for v in _weights(run).values()]),
    )
    for r in (0, 1):
        assert "SIGTERM: Slurm is ending this attempt" in (run / "logs" / f"rank{r}.log").read_text()


@pytest.mark.parametrize("method", ["lungheart", "diseasemask"])
def test_mask_methods_requeued_between_stages(
    method: str,
    cluster: Cluster,  # noqa: F811
    shard_root: Path,
    phantom_root: Path,
    tmp_path: Path,
):
    """Requeued once the first stage is done: the rest runs in the next attempt, the first stage is not redone."""
    run = tmp_path / method
    overrides = (
        lungheart_overrides(shard_root, phantom_root) if method == "lungheart" else diseasemask_overrides(shard_root)
    )
    flags = ["--cluster", "slurm", "--nodes", "2", "--tasks-per-node", "1", "--partition", "debug"]
    out = submit([*flags, "--timeout-min", "20", "--run-dir", str(run), *overrides])
    first = sorted((run / "stages").glob("00_*")) if (run / "stages").is_dir() else []
    deadline = time.time() + 600
    while time.time() < deadline and not (first and (first[0] / "DONE.json").is_file()):
        time.sleep(0.2)
        first = sorted((run / "stages").glob("00_*")) if (run / "stages").is_dir() else []
    assert first and (first[0] / "DONE.json").is_file(), "the first stage did not finish"
    subprocess.run(["scontrol", "requeue", out["job_id"]], check=True, env=cluster.env, timeout=30)
    wait_results(out["job"])
    stages = sorted(p for p in (run / "stages").iterdir() if p.is_dir())
    assert all((d / "DONE.json").is_file() for d in stages), stages
    assert json.loads((stages[-1] / "DONE.json").read_text())["world_size"] == 2
    rank0 = (run / "logs" / "rank0.log").read_text()
    assert "SIGTERM: Slurm is ending this attempt" in rank0
    assert rank0.count(f"stage {first[0].name.split('_', 1)[1]}: start") == 1
    rid = (run / "wandb_id.txt").read_text().strip()
    assert len(list((run / "wandb" / "wandb").glob(f"offline-run-*-{rid}"))) == 2
    assert len(list(run.glob("stages/*/**/*.png"))) >= 3


def test_sharding_array_matches_single_process(
    cluster: Cluster,
    phantom_root: Path,
    shard_root: Path,  # noqa: F811
    tmp_path: Path,
):
    out = submit_sharding(
        [
            "--nih-root",
            str(phantom_root),
            "--out",
            str(tmp_path / "s"),
            "--size",
            "64",
            "--samples-per-shard",
            "40",
            "--seed",
            "0",
            "--array",
            "2",
            "--partition",
            "debug",
            "--timeout-min",
            "10",
            "--wait",
        ]
    )
    assert len(out["array"]) == 2
    for split in ("train", "val", "test", "bbox"):
        got = json.loads((tmp_path / "s" / split / "_info.json").read_text())["shards"]
        want = json.loads((shard_root / split / "_info.json").read_text())["shards"]
        assert [s["sha256"] for s in got] == [s["sha256"] for s in want]


def _train_sbatch(
    cluster: Cluster,  # noqa: F811
    shard_root: Path,
    run: Path,
    *,
    wait: bool,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``sbatch slurm/train.sbatch`` (srun + torchrun, no submitit) for tiny chexnet on both nodes."""
    repo = Path(__file__).resolve().parents[2]
    overrides = [
        "method=chexnet",
        f"data.root={shard_root}",
        "logger=none",
        *[o for o in TINY if not o.startswith("method.stages.train.epochs")],
        "method.stages.train.epochs=1",
    ]
    env = {**cluster.env, "PYTHON": sys.executable, "RUN_DIR": str(run), "GLOO_SOCKET_IFNAME": "lo", **(env or {})}
    flags = ["--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1", "--partition=debug", "--time=15"]
    cmd = ["sbatch", "--parsable", *(["--wait"] if wait else []), *flags, "-o", str(run.parent / "train.out")]
    cmd += ["--chdir", str(run.parent), str(repo / "slurm" / "train.sbatch"), *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def test_train_sbatch_runs_cxrdist_train(cluster: Cluster, shard_root: Path, tmp_path: Path):  # noqa: F811
    """The srun + torchrun template (no submitit) trains and evaluates chexnet on both nodes."""
    run = tmp_path / "sbatch-run"
    proc = _train_sbatch(cluster, shard_root, run, wait=True)
    out = tmp_path / "train.out"
    assert proc.returncode == 0, f"{proc.stderr}\n{out.read_text() if out.exists() else ''}"
    done = json.loads((run / "stages" / "01_eval" / "DONE.json").read_text())
    assert done["world_size"] == 2


def test_train_sbatch_requeue_takes_sigterm_like_submitit(cluster: Cluster, shard_root: Path, tmp_path: Path):  # noqa: F811
    """Requeued mid-epoch, the torchrun workers take SIGTERM as the submitit path does (each rank logs the line
    and freezes until the kill) and the next attempt of the same job resumes to the end."""
    run = tmp_path / "sbatch-requeue"
    proc = _train_sbatch(cluster, shard_root, run, wait=False, env={FAULT_ENV: "pause:epoch_end"})
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    try:
        _wait_for(run / "logs" / "rank0.log", "test fault: paused at epoch_end")
        subprocess.run(["scontrol", "requeue", job_id], check=True, env=cluster.env, timeout=30)
        _wait_for(run / "stages" / "01_eval" / "DONE.json", "world_size", timeout=600)
        # the ranks still shut down after the last DONE.json: cancelling now would SIGTERM them a second time
        _wait_gone(cluster, job_id)
    finally:
        subprocess.run(["scancel", job_id], env=cluster.env, timeout=30)
    for r in (0, 1):
        assert (run / "logs" / f"rank{r}.log").read_text().count("SIGTERM: Slurm is ending this attempt") == 1
    sbatch_out = (run / "logs" / f"sbatch-{job_id}.out").read_text()
    assert f"job {job_id} restart 1:" in sbatch_out, sbatch_out[-2000:]
