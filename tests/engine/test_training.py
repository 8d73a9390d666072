"""The engine end to end on a tiny net: exact resume after a real kill, batch invariance, DDP vs DeepSpeed,
NaN guard, stage skipping, W&B run id across restarts."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cxrdist import wandb_run
from cxrdist.engine.pipeline import read_done, run_stages
from cxrdist.engine.stages import FunctionStage, StageContext, TrainStage
from cxrdist.engine.trainer import NonFiniteLossError
from cxrdist.eval.compare import localization_intervals, patients_of
from cxrdist.eval.leaderboard import load_predictions
from cxrdist.eval.pairs_file import read_pairs
from cxrdist.log import Tracker, read_metrics
from cxrdist.run import wandb_sync
from cxrdist.run.local import run_local
from cxrdist.run.prepare import prepare_run
from testkit.tiny import TinyNet, tiny_cfg, tiny_stages, tiny_stages_with_eval

HERE = Path(__file__).parent


def weights(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "stages" / "00_train" / name, weights_only=True)["model"]


def same(a: dict, b: dict, atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if atol == 0 else torch.allclose(a[k], b[k], atol=atol) for k in a
    )


@pytest.mark.slow
def test_killed_two_rank_run_resumes_bit_identical(shard_root: Path, tmp_path: Path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), str(HERE.parents[0])]),
    }
    cmd = [sys.executable, "-m", "testkit.tiny", str(shard_root)]
    extra = ["logger=wandb"]
    subprocess.run([*cmd, str(tmp_path / "ref"), "2", *extra], check=True, env=env, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, str(run), "2", *extra],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = run / "stages" / "00_train" / "ckpt"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpt / "step-00000004").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "stages" / "00_train" / "DONE.json").exists(), "finished before the kill; test is void"
    wandb_id = (run / "wandb_id.txt").read_text()
    subprocess.run([*cmd, str(run), "2", *extra], check=True, env=env, capture_output=True)
    assert same(weights(tmp_path / "ref"), weights(run))
    assert same(weights(tmp_path / "ref", "best.pt"), weights(run, "best.pt"))
    assert (run / "wandb_id.txt").read_text() == wandb_id
    segments = list((run / "wandb" / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and all(s.name.endswith(wandb_id.strip()) for s in segments)
    hist_ref = read_done(tmp_path / "ref" / "stages" / "00_train")["outputs"]["history"]
    assert read_done(run / "stages" / "00_train")["outputs"]["history"] == hist_ref
    # metrics.jsonl: rows of both attempts, tagged; read back, each step once, as the uninterrupted run's.
    rows = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert {r["attempt"] for r in rows} == {1, 2}

    def stable(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("time", "attempt", "train/images_per_s")} for r in rows]

    assert stable(read_metrics(run)) == stable(read_metrics(tmp_path / "ref"))
    # one consolidated W&B run: attempt 1 (SIGKILLed: preempted) and 2 (finished), every row once, in order
    result = wandb_sync.consolidate(run)
    assert [a["state"] for a in result.plan.attempts] == ["preempted", "finished"] and result.plan.state == "finished"
    assert [wandb_run.step_axis(r) for r in result.plan.rows] == [wandb_run.step_axis(r) for r in read_metrics(run)]
    assert [r["train/step"] for r in result.plan.rows] == [r["train/step"] for r in read_metrics(run)]
    assert list((run / "wandb").rglob("offline-run-*")).count(result.folder) == 1


def _one_step_weights(shards: Path, run_dir: Path, nproc: int, *extra: str) -> dict:
    cfg = tiny_cfg(shards, run_dir, "method.stages.train.epochs=1", "method.stages.train.max_steps_per_epoch=2", *extra)
    run_local(cfg, nproc=nproc, stages_fn=tiny_stages)
    return weights(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_deepspeed_matches_ddp(shard_root: Path, tmp_path: Path, stage: int):
    ref = _one_step_weights(
        shard_root, tmp_path / "ddp", 2, "method.stages.train.optim.name=adam", "method.stages.train.optim.lr=0.001"
    )
    got = _one_step_weights(
        shard_root,
        tmp_path / f"ds{stage}",
        2,
        "engine=deepspeed",
        f"engine.zero_stage={stage}",
        "method.stages.train.optim.name=adam",
        "method.stages.train.optim.lr=0.001",
    )
    assert same(ref, got, atol=1e-5)


def test_deepspeed_single_process(shard_root: Path, tmp_path: Path):
    """One process (no torchrun, no process group) with engine=deepspeed: same update as DDP/bare."""
    ref = _one_step_weights(shard_root, tmp_path / "bare", 1)
    got = _one_step_weights(shard_root, tmp_path / "ds", 1, "engine=deepspeed", "engine.zero_stage=1")
    assert same(ref, got, atol=1e-6)


def test_persistent_workers_train_like_no_workers(shard_root: Path, tmp_path: Path):
    """Two epochs with validation through the torch loader's persistent workers (train and val loaders, each kept
    across epochs) give the weights of workers=0 bit for bit."""
    runs = {}
    for w in (0, 2):
        cfg = tiny_cfg(
            shard_root, tmp_path / f"w{w}", "method.stages.train.max_steps_per_epoch=3", f"loader.workers={w}"
        )
        run_local(cfg, nproc=1, stages_fn=tiny_stages)
        runs[w] = weights(tmp_path / f"w{w}")
    assert same(runs[0], runs[2])


@pytest.mark.parametrize("keep", [False, True])
def test_finished_stage_drops_resume_checkpoints(shard_root: Path, tmp_path: Path, keep: bool):
    """DONE stages never resume: ckpt/ goes once DONE.json is written (unless kept); best.pt/last.pt stay."""
    _one_step_weights(shard_root, tmp_path / "run", 1, "engine.ckpt_every_steps=1", f"engine.keep_resume_ckpt={keep}")
    sdir = tmp_path / "run" / "stages" / "00_train"
    assert read_done(sdir) is not None and (sdir / "best.pt").is_file() and (sdir / "last.pt").is_file()
    assert (sdir / "ckpt" / "step-00000002").is_dir() == keep and (sdir / "ckpt").exists() == keep


def test_failed_checkpoint_cleanup_does_not_fail_a_finished_stage(
    shard_root: Path, tmp_path: Path, monkeypatch, caplog
):
    from cxrdist.engine import pipeline

    def broken_rmtree(path):
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(pipeline.shutil, "rmtree", broken_rmtree)
    cfg = tiny_cfg(shard_root, tmp_path / "nfs")
    prepare_run(cfg)
    ctx = StageContext(
        cfg=cfg, run_dir=tmp_path / "nfs", env=__import__("cxrdist.dist").dist.DistEnv(), tracker=Tracker()
    )
    stage = FunctionStage("a", lambda c: (c.stage_dir / "ckpt" / "step-00000001").mkdir(parents=True) or {})
    with caplog.at_level(logging.WARNING):
        run_stages(ctx, [stage])
    assert read_done(tmp_path / "nfs" / "stages" / "00_a") is not None
    assert "could not delete" in caplog.text and "Directory not empty" in caplog.text


class _NaNAfter(TinyNet):
    calls = 0

    def forward_with_maps(self, x):
        type(self).calls += 1
        logits, maps = super().forward_with_maps(x)
        return (logits * float("nan") if type(self).calls > 5 else logits), maps


def test_nan_guard_keeps_last_checkpoint(shard_root: Path, tmp_path: Path):
    cfg = tiny_cfg(shard_root, tmp_path / "nan")
    prepare_run(cfg)
    ctx = StageContext(
        cfg=cfg, run_dir=tmp_path / "nan", env=__import__("cxrdist.dist").dist.DistEnv(), tracker=Tracker()
    )
    with pytest.raises(NonFiniteLossError, match="non-finite loss.*Last good checkpoint: .*step-00000004"):
        run_stages(ctx, [TrainStage("train", cfg.method.stages.train, lambda c: _NaNAfter())])
    ckpt = tmp_path / "nan" / "stages" / "00_train" / "ckpt"
    assert [p.name for p in sorted(ckpt.iterdir())] == ["step-00000002", "step-00000004"]
    state = torch.load(ckpt / "step-00000004" / "model_optim.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_finished_stages_are_skipped(shard_root: Path, tmp_path: Path):
    cfg = tiny_cfg(shard_root, tmp_path / "skip")
    prepare_run(cfg)
    calls = []
    stages = [
        FunctionStage("a", lambda ctx: calls.append("a") or {"n": 1}),
        FunctionStage("b", lambda ctx: calls.append("b") or {"path": str(ctx.stage_path("a"))}),
    ]
    ctx = StageContext(
        cfg=cfg, run_dir=tmp_path / "skip", env=__import__("cxrdist.dist").dist.DistEnv(), tracker=Tracker()
    )
    run_stages(ctx, stages)
    run_stages(ctx, stages)
    assert calls == ["a", "b"]
    done = json.loads((tmp_path / "skip" / "stages" / "01_b" / "DONE.json").read_text())
    assert done["outputs"]["path"].endswith("00_a") and done["config_hash"] and done["code_version"]
    (tmp_path / "skip" / "stages" / "01_b" / "DONE.json").unlink()
    run_stages(ctx, stages)
    assert calls == ["a", "b", "b"]


def test_train_then_evaluate_writes_reports(shard_root: Path, tmp_path: Path):
    cfg = tiny_cfg(shard_root, tmp_path / "ev", "method.stages.train.epochs=1")
    run_local(cfg, nproc=1, stages_fn=tiny_stages_with_eval)
    out = tmp_path / "ev" / "stages" / "01_eval"
    m = json.loads((out / "test" / "metrics.json").read_text())
    assert m["num_samples"] > 0 and "per_class" in m["auroc"]
    loc = json.loads((out / "bbox" / "metrics.json").read_text())["localization"]
    assert loc["num_boxes"] > 0 and "acc_at_iou" in loc and "best_box_iou" in loc and "acc_afp_at_overlap" in loc
    hm = __import__("numpy").load(out / "bbox" / "heatmaps.npz")
    assert len(hm["keys"]) == loc["num_pairs"] and hm["heatmaps"].shape[1:] == (224, 224)
    # the per-pair FP counts live beside metrics.json; read back, they give the intervals the evaluator wrote
    assert loc["per_pair"] == {"file": "localization_pairs.npz", "num_pairs": loc["num_pairs"]}
    keys = load_predictions(out / "bbox" / "metrics.json")["keys"].tolist()
    by_key = dict(zip(keys, patients_of(keys)[0].tolist()))
    bbox = json.loads((out / "bbox" / "metrics.json").read_text())
    assert localization_intervals(read_pairs(loc, out / "bbox"), by_key) == bbox["localization_intervals"]
    assert bbox["localization_intervals"] and all(
        "afp_at_iou>0.5" in f for f in bbox["localization_intervals"].values()
    )
    assert (out / "test" / "roc.png").stat().st_size > 0 and list((out / "bbox" / "heatmaps").glob("*.png"))
    # The in-process rank session closed its log file: later records neither land in nor reopen it.
    log_file = tmp_path / "ev" / "logs" / "rank0.log"
    assert not [h for h in logging.getLogger().handlers if getattr(h, "baseFilename", "") == str(log_file)]
    size = log_file.stat().st_size
    logging.getLogger("cxrdist.test").warning("after the run")
    assert log_file.stat().st_size == size
