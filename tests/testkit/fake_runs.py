"""Run dirs of every method made without training: each training stage's ``best.pt`` is a random network (its
weights jittered so that zero-initialised residual branches and BatchNorm scales carry the image), marked done;
the stages that write what the final model reads (lungheart's masks, diseasemask's align) and the evaluation
run for real through ``run_local``. The evaluator's test and val predictions are then in ``stages/NN_eval``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cxrdist.config import compose
from cxrdist.data.format import read_json
from cxrdist.engine.checkpoint import save_model_weights
from cxrdist.engine.pipeline import results_hash, stage_dirs
from cxrdist.engine.stages import EvalStage, TrainStage
from cxrdist.methods import get_method
from cxrdist.run.local import run_local
from testkit.tiny_methods import method_overrides

METHODS = ("dcnn", "chexnet", "ma", "cral", "amdensenet", "lungheart", "diseasemask")
# weight jitter: enough for the images to move the outputs (amdensenet's random net is nearly constant at 0.01)
JITTER = {"amdensenet": 0.05}
RUN_FOR_REAL = {"lungheart": {"masks"}, "diseasemask": {"align"}}  # besides eval: they write the sidecars


def _jittered(model: torch.nn.Module, seed: int, scale: float) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def _done(stage_dir: Path, name: str, cfg) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    record = {"stage": name, "outputs": {"weights": "best.pt"}, "config_hash": results_hash(cfg)}
    (stage_dir / "DONE.json").write_text(json.dumps(record))


def fake_run(method: str, shards: Path, phantom: Path, run_dir: Path, *extra: str) -> Path:
    """A run dir of ``method`` (tiny budget of tests/methods/tiny_methods.py) with random trained networks."""
    cfg = compose(
        [*method_overrides(method, shards, phantom), f"run_dir={run_dir}", "logger=none", "eval.splits=[test,val]"]
        + list(extra)
    )
    cfg.data.expected_config_hash = read_json(shards / "_dataset.json")["config_hash"]  # as prepare_run pins it
    m = get_method(method)(cfg)
    stages = m.stages()
    dirs = stage_dirs(run_dir, stages)
    aux = {a.stage: a for a in m.aux_networks()}
    jitter = JITTER.get(method, 0.01)
    for i, s in enumerate(stages):
        if isinstance(s, EvalStage) or s.name in RUN_FOR_REAL.get(method, set()):
            continue
        torch.manual_seed(i)
        if isinstance(s, TrainStage):
            net = _jittered(s.build_model(None), i, jitter)
            for name in ("best.pt", "last.pt"):  # cral and amdensenet evaluate the last epoch's model
                save_model_weights(dirs[s.name] / name, net, {})
        elif s.name in aux:
            save_model_weights(dirs[s.name] / aux[s.name].weights, _jittered(aux[s.name].build(), i, jitter), {})
        _done(dirs[s.name], s.name, cfg)
    run_local(cfg)
    return run_dir
