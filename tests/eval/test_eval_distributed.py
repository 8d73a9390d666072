"""The distributed evaluator: AUROC identical to sklearn on the whole split at world sizes 1, 2, 3 (split size
divisible by neither 2 nor 3), with both loaders; a missing or duplicated index is an error."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from sklearn.metrics import roc_auc_score

from cxrdist.data.loaders.base import LoaderSpec
from cxrdist.data.loaders.factory import build_loader
from cxrdist.dist import free_port
from cxrdist.engine.inference import gather_to_main, run_inference
from cxrdist.eval.classification import auroc_per_class
from testkit.tiny import TinyNet

OPS = [{"op": "resize", "size": 40}, {"op": "center_crop", "size": 32}]


def _spec(root: Path) -> LoaderSpec:
    return LoaderSpec(root=str(root), split="test", train=False, batch_per_rank=8, ops=OPS, workers=0)


def _model() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def _rank(rank: int, world: int, port: int, root: str, backend: str, out: str, drop_last_batch: bool) -> None:
    import torch.distributed as td

    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    loader = build_loader(backend, _spec(Path(root)), world_size=world, rank=rank)
    local = run_inference(_model(), loader)
    if drop_last_batch and rank == world - 1:
        local = {k: v[:-3] for k, v in local.items()}
    try:
        placed = gather_to_main(local, loader.num_samples)
        if rank == 0:
            np.save(out, placed["logits"])
    except ValueError as e:
        if rank == 0:
            Path(out).with_suffix(".err").write_text(str(e))
    td.destroy_process_group()


def _distributed_logits(root: Path, backend: str, world: int, tmp: Path, drop: bool = False) -> np.ndarray | str:
    out = tmp / f"{backend}-{world}-{drop}.npy"
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.start_processes(
        _rank,
        args=(world, free_port(), str(root), backend, str(out), drop),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    err = out.with_suffix(".err")
    return err.read_text() if err.exists() else np.load(out)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_auroc_exact_at_any_world_size(shard_root: Path, tmp_path: Path, backend: str):
    """Logits gathered at world 2 and 3 equal one process's, so AUROC equals sklearn on the whole split."""
    loader = build_loader(backend, _spec(shard_root))
    n = loader.num_samples
    assert n % 2 and n % 3, f"test split of {n} must be divisible by neither 2 nor 3"
    labels = loader.reader.labels
    with torch.no_grad():
        ref = np.concatenate([_model()(b["image"]).numpy() for b in loader])  # one process, split order
    want = [roc_auc_score(labels[:, c], ref[:, c]) for c in range(14) if 0 < labels[:, c].sum() < n]
    for world in (2, 3):
        logits = _distributed_logits(shard_root, backend, world, tmp_path)
        assert np.array_equal(logits, ref), f"world {world}: gathered logits differ from one process's"
        got = auroc_per_class(labels, logits)
        assert [v for v in got["per_class"].values() if v is not None] == want


def test_missing_index_is_an_error(shard_root: Path, tmp_path: Path):
    msg = _distributed_logits(shard_root, "torch", 2, tmp_path, drop=True)
    assert isinstance(msg, str) and "never filled" in msg or "missing" in msg


def test_duplicated_index_is_an_error():
    local = {"index": np.array([0, 1, 1, 2]), "logits": np.arange(8.0).reshape(4, 2)}
    with pytest.raises(ValueError, match="1"):
        gather_to_main(local, 3)
