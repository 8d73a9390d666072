"""The five papers' methods through ``launch/submit.py --cluster local`` (submitit's local executor, the Job
callable, W&B offline): every stage finishes; the evaluation and every artifact are images in the run dir and
in W&B."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrdist.engine.pipeline import read_done
from cxrdist.run.launcher import submit
from testkit.tiny_methods import method_overrides

ARTIFACTS = {  # files in the run dir, and the W&B image keys' prefixes (media/images/<prefix>/...)
    "ma": (["03_eval/test/roc.png", "03_eval/bbox/roc.png"], {"eval"}),
    "cral": (["01_eval/test/roc.png", "01_eval/bbox/roc.png"], {"eval"}),
    "amdensenet": (["01_eval/test/roc.png", "01_eval/bbox/roc.png"], {"eval"}),
    "lungheart": (["00_seg/examples.png", "01_masks/examples.png"], {"seg", "masks", "eval"}),
    "diseasemask": (
        ["01_align/anchor.png", "01_align/alignment.png", "03_masks/masks/Cardiomegaly.png"],
        {"align", "masks", "eval"},
    ),
}


@pytest.mark.parametrize("method", list(ARTIFACTS))
def test_submit_local_runs_every_stage(method: str, shard_root: Path, phantom_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    overrides = method_overrides(method, shard_root, phantom_root)
    out = submit(["--cluster", "local", "--run-dir", str(run), "--timeout-min", "20", *overrides])
    out["job"].result()
    stage_dirs = sorted(p for p in (run / "stages").iterdir() if p.is_dir())
    assert stage_dirs and all(read_done(d) is not None for d in stage_dirs), stage_dirs
    files, prefixes = ARTIFACTS[method]
    for rel in files:
        assert (run / "stages" / rel).is_file(), rel
    media = list((run / "wandb" / "wandb").glob("offline-run-*/files/media/images/*/**/*.png"))
    logged = {p.parts[p.parts.index("images") + 1] for p in media}
    assert prefixes <= logged, (prefixes, logged)
    # the bbox split's heatmap examples carry their ground-truth and predicted boxes as W&B box layers
    boxes = list((run / "wandb" / "wandb").glob("offline-run-*/files/media/metadata/boxes2D/eval/boxes/**/*.json"))
    assert boxes and all(p.stat().st_size > 0 for p in boxes), boxes
