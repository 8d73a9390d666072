"""Run a method's stages in order; skip finished ones; write each stage's DONE.json atomically.

``run_stage`` dispatches each kind of stage (plain data, ``stages.py``) to what does the work: the trainer, the
distributed inference of a :class:`ScoreStage`, the evaluator, or a :class:`FunctionStage`'s function.

A stage is finished when ``RUN/stages/NN_name/DONE.json`` exists: rank 0 writes it (temp + rename) after a
barrier, with the stage's outputs, the hash of the config the stage depends on and the code version. A DONE
written under another config is an error (a run dir is tied to its config; see run/prepare.py for ``--force``).
Once DONE.json is in place the stage's resume checkpoints (``ckpt/``) are deleted unless
``engine.keep_resume_ckpt``: a finished stage never resumes, and they are the bulk of a run's disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cxrdist import __version__, dist
from cxrdist.config import config_hash, to_container
from cxrdist.engine.checkpoint import load_trained
from cxrdist.engine.evaluator import evaluate_model
from cxrdist.engine.inference import gather_to_main, run_inference
from cxrdist.engine.stages import EvalStage, FunctionStage, ScoreStage, Stage, StageContext, TrainStage
from cxrdist.engine.trainer import Trainer

logger = logging.getLogger(__name__)


def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = "unknown"
    return f"{__version__}+{sha}"


def results_hash(cfg: DictConfig, with_root: bool = False) -> str:
    """Hash of what determines a stage's results: the shards' pinned hash, method and seed.

    Not data.root: a run may move to another copy of the same shards (the pinned writer hash is checked).
    ``with_root`` gives the hash that DONE.json files written before that change hold.
    """
    d = to_container(cfg)
    data = d["data"] if with_root else {k: v for k, v in d["data"].items() if k != "root"}
    return config_hash({"data": data, "method": d["method"], "seed": d["seed"]})


def stage_dirs(run_dir: Path, stages: list[Stage]) -> dict[str, Path]:
    """``RUN/stages/NN_name`` for every stage; names must be unique."""
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate stage names {names}")
    return {s.name: run_dir / "stages" / f"{i:02d}_{s.name}" for i, s in enumerate(stages)}


def read_done(stage_dir: Path) -> dict[str, Any] | None:
    """A stage's DONE.json, or None if the stage has not finished."""
    path = stage_dir / "DONE.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _write_done(stage_dir: Path, record: dict[str, Any]) -> None:
    tmp = stage_dir / ".DONE.json.tmp"
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, stage_dir / "DONE.json")


def _drop_resume_checkpoints(stage_dir: Path) -> None:
    """Delete a finished stage's ``ckpt/`` (after DONE.json, so a crash here leaves a finished stage)."""
    ckpt = stage_dir / "ckpt"
    if not ckpt.is_dir():
        return
    size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    try:
        shutil.rmtree(ckpt)
    except OSError as e:  # e.g. NFS silly-renamed files: the stage is finished, only the disk is not freed
        logger.warning(
            "stage %s: could not delete %s (%s); the stage is finished, delete it by hand", stage_dir.name, ckpt, e
        )
        return
    logger.info(
        "stage %s: deleted its resume checkpoints (%.1f MB; engine.keep_resume_ckpt=false)", stage_dir.name, size / 1e6
    )


def run_score_stage(ctx: StageContext, stage: ScoreStage) -> dict[str, Any]:
    """Distributed inference of the stage's model over its split; ``stage.finish`` turns the result into artifacts."""
    model = load_trained(stage.build_model(ctx), stage.weights(ctx), ctx.env.device)
    spec = ctx.loader_spec(
        split=stage.split,
        train=False,
        transforms=stage.transforms(ctx),
        batch=ctx.cfg.loader.eval_batch_per_rank,
        **stage.loader_extras(ctx),
    )
    loader = ctx.make_loader(spec)
    with ctx.progress(loader.num_samples, f"{stage.name}: scoring {stage.split}") as bar:
        local = run_inference(model, loader, forward=stage.forward, progress=bar)
    placed = gather_to_main(local, loader.num_samples)
    return stage.finish(ctx, placed, loader)


def run_stage(ctx: StageContext, stage: Stage) -> dict[str, Any]:
    """Do one stage's work (collectively on every rank); return its outputs for DONE.json."""
    if isinstance(stage, TrainStage):
        return Trainer(ctx, stage).fit()
    if isinstance(stage, ScoreStage):
        return run_score_stage(ctx, stage)
    if isinstance(stage, EvalStage):
        return evaluate_model(ctx, stage)
    if isinstance(stage, FunctionStage):
        return stage.fn(ctx)
    raise TypeError(f"stage {stage.name!r}: unknown kind {type(stage).__name__}")


def run_stages(ctx: StageContext, stages: list[Stage]) -> dict[str, dict[str, Any]]:
    """Run every unfinished stage in order (collectively); return each stage's DONE record."""
    dirs = stage_dirs(ctx.run_dir, stages)
    ctx.stage_dirs = dirs
    want = results_hash(ctx.cfg)
    legacy = results_hash(ctx.cfg, with_root=True)
    records = {}
    for stage in stages:
        sdir = dirs[stage.name]
        done = read_done(sdir)
        if done is not None:
            if done.get("config_hash") not in (want, legacy):
                raise RuntimeError(
                    f"{sdir / 'DONE.json'} was written under config {done.get('config_hash')}, this "
                    f"run's is {want}: use a new run dir (or --force to start over)"
                )
            logger.info("stage %s: done (%s), skipped", stage.name, sdir / "DONE.json")
            records[stage.name] = done
            continue
        if ctx.env.is_main:
            sdir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        ctx.stage_dir = sdir
        logger.info("stage %s: start (%s)", stage.name, sdir)
        t0 = time.time()
        outputs = run_stage(ctx, stage)
        dist.barrier()
        record = {
            "stage": stage.name,
            "outputs": outputs,
            "config_hash": want,
            "code_version": code_version(),
            "seconds": round(time.time() - t0, 2),
            "world_size": ctx.env.world_size,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        if ctx.env.is_main:
            _write_done(sdir, record)
            if not ctx.cfg.engine.keep_resume_ckpt:
                _drop_resume_checkpoints(sdir)
        dist.barrier()
        records[stage.name] = record
        logger.info("stage %s: done in %.1f s", stage.name, record["seconds"])
    return records
