"""``launch/evaluate.py``: evaluate a trained run's model (any stage's) on any split, on local ranks."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from cxrdist.config import load_config, to_container
from cxrdist.dist import free_port, local_rank_env
from cxrdist.engine.evaluator import evaluate_model
from cxrdist.engine.pipeline import stage_dirs
from cxrdist.engine.stages import EvalStage
from cxrdist.run import rundir
from cxrdist.run.external import external_eval_dir
from cxrdist.run.local import spawn_ranks
from cxrdist.run.preflight import check_eval_request
from cxrdist.run.session import method_stages, rank_session


def _evaluate_rank(
    run_dir: str,
    splits: list[str],
    stage: str | None,
    lock: str | None = None,
    shards: str | None = None,
    name: str | None = None,
) -> None:
    """One rank of launch/evaluate.py: the method's final EvalStage with another checkpoint and splits (and, with
    ``shards``, another shard root: an external set, whose writer hash the run does not pin, written and logged
    under ``name``, default: the shard set's, see ``run/external.py``)."""
    cfg = load_config(Path(run_dir) / "config.yaml")
    cfg.eval.splits = splits
    out_root, prefix = Path(run_dir) / "eval", None
    if shards is not None:
        cfg.data.root, cfg.data.expected_config_hash = str(shards), None
        out_root = external_eval_dir(Path(run_dir), shards, name)
        prefix = f"eval/external/{out_root.name}"
    with rank_session(to_container(cfg), run_dir, lock=lock, role="an evaluation") as ctx:
        stages = method_stages(ctx.cfg)
        ctx.stage_dirs = stage_dirs(Path(run_dir), stages)
        final = next((s for s in reversed(stages) if isinstance(s, EvalStage)), None)
        if final is None:
            raise ValueError(f"method {cfg.method.name} has no evaluation stage")
        if stage is not None:
            if stage not in ctx.stage_dirs:
                raise ValueError(f"no stage {stage!r} in method {cfg.method.name} (stages: {list(ctx.stage_dirs)})")
            weights = ctx.stage_dirs[stage] / "best.pt"
            final = dataclasses.replace(final, weights=lambda c: weights)
        evaluate_model(ctx, final, out_root=out_root, prefix=prefix)


def _spawn_eval(
    rank: int,
    world: int,
    port: int,
    run_dir: str,
    splits: list[str],
    stage: str | None,
    lock: str | None,
    shards: str | None = None,
    name: str | None = None,
) -> None:
    os.environ.update(local_rank_env(rank, world, port))
    _evaluate_rank(run_dir, splits, stage, lock, shards, name)


def evaluate_run(
    run_dir: Path,
    splits: list[str],
    stage: str | None = None,
    nproc: int = 1,
    shards: str | Path | None = None,
    name: str | None = None,
) -> Path:
    """Evaluate a run's best model (of ``stage``, default: the final eval stage's) into ``RUN/eval/<split>``, or
    with ``shards`` (an external shard root) into ``RUN/eval/external/<name>/<split>`` (``name``: default the
    shard set's dataset and non-default options, see ``run/external.py``).

    Holds the run dir's lock while it runs: a run dir that a job is training is refused.
    """
    shards = None if shards is None else str(shards)
    check_eval_request(Path(run_dir), splits, stage, nproc, shards, name)  # before any process, W&B run or output
    lock = rundir.new_token()
    rundir.acquire_lock(run_dir, lock, role="an evaluation")
    try:
        if nproc == 1:
            _evaluate_rank(str(run_dir), splits, stage, lock, shards, name)
        else:
            args = (nproc, free_port(), str(run_dir), splits, stage, lock, shards, name)
            spawn_ranks(_spawn_eval, nproc, args, Path(run_dir))
    finally:
        rundir.release_lock(run_dir, lock)
    return Path(run_dir) / "eval" if shards is None else external_eval_dir(Path(run_dir), shards, name)
