"""The same experiment at any scale: one global batch on 1, 2 or 4 ranks, or accumulated, ends with the same weights.

The test a user relies on when moving a method from a workstation to a cluster. DDP and DeepSpeed ZeRO 1 and 2 on
gloo (CPU, fp32), the batch-weighted BCE (its P and N counted over the optimizer step's global batch), SGD with
momentum (an update linear in the gradient, so a round-off difference stays one; Adam's first steps are
lr · sign(g) and would turn a 1e-9 difference in a near-zero gradient into 2 · lr), 3 optimizer steps of 16 images:

- with BatchNorm (synchronised, ``engine.sync_bn``): 16 images on 1 rank = 8 on each of 2 = 4 on each of 4;
- without BatchNorm: 1 rank × 4 accumulated micro-batches of 4 = 4 ranks × 4.

Tolerance (fp32 round-off: the same sums in another order): every weight and BatchNorm buffer within
``ATOL + RTOL·|w|``. A control shows the comparison can fail: without synchronised BatchNorm, 2 ranks differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from cxrdist.dist import free_port
from cxrdist.engine.pipeline import read_done
from testkit.tiny import invariance_worker

ATOL, RTOL = 1e-6, 1e-5
COMMON = (
    "method.stages.train.loss=weighted_bce",
    "method.stages.train.epochs=1",
    "method.stages.train.max_steps_per_epoch=3",
    "engine.ckpt_every_steps=100",
)
ENGINES = {
    "ddp": (),
    "zero1": ("engine=deepspeed", "engine.zero_stage=1"),
    "zero2": ("engine=deepspeed", "engine.zero_stage=2"),
}


def _cases(world: int) -> list[tuple[str, str, list[str]]]:
    cases = [(f"{e}-bn", "tiny_bn", [*COMMON, *o]) for e, o in ENGINES.items()]
    if world == 1:  # accumulation: 4 micro-batches of 4
        cases += [(f"{e}-nobn", "tiny", [*COMMON, *o, "engine.max_batch_per_rank=4"]) for e, o in ENGINES.items()]
    if world == 4:
        cases += [(f"{e}-nobn", "tiny", [*COMMON, *o]) for e, o in ENGINES.items()]
    if world == 2:  # control: BatchNorm over each rank's 8 images
        cases.append(("ddp-bn-unsynced", "tiny_bn", [*COMMON, "engine.sync_bn=false"]))
    return cases


@pytest.fixture(scope="module")
def runs(shard_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("invariance")
    for world in (1, 2, 4):
        args = (world, free_port(), str(shard_root), str(root), _cases(world))
        mp.start_processes(invariance_worker, args=args, nprocs=world, join=True, start_method="spawn")
    return root


def _weights(root: Path, case: str, world: int) -> dict[str, torch.Tensor]:
    return torch.load(root / case / f"w{world}" / "stages" / "00_train" / "last.pt", weights_only=True)["model"]


def _max_excess(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over entries of |a − b| − (ATOL + RTOL·|b|): ≤ 0 when every entry is within the tolerance."""
    assert a.keys() == b.keys()
    return max(float(((a[k].double() - b[k].double()).abs() - ATOL - RTOL * b[k].double().abs()).max()) for k in a)


def _done(root: Path, case: str, world: int) -> dict:
    return read_done(root / case / f"w{world}" / "stages" / "00_train")["outputs"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(ENGINES))
def test_batchnorm_net_same_weights_on_1_2_4_ranks(runs: Path, engine: str):
    ref = _weights(runs, f"{engine}-bn", 1)
    assert any("running_var" in k for k in ref)  # BatchNorm buffers are compared too
    for world in (2, 4):
        assert _max_excess(_weights(runs, f"{engine}-bn", world), ref) <= 0, (engine, world)
        bn = _done(runs, f"{engine}-bn", world)["batchnorm"]
        assert bn == {"layers": 2, "synced": True, "images": 16, "global_batch": 16}
    assert _done(runs, f"{engine}-bn", 1)["batchnorm"]["images"] == 16


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(ENGINES))
def test_accumulation_equals_ranks_without_batchnorm(runs: Path, engine: str):
    acc, ranks = _done(runs, f"{engine}-nobn", 1), _done(runs, f"{engine}-nobn", 4)
    assert (acc["accum"], acc["micro_batch"], ranks["accum"], ranks["micro_batch"]) == (4, 4, 1, 4)
    assert acc["steps"] == ranks["steps"] == 3 and acc["batchnorm"] == {"layers": 0}
    assert _max_excess(_weights(runs, f"{engine}-nobn", 4), _weights(runs, f"{engine}-nobn", 1)) <= 0


@pytest.mark.slow
def test_unsynchronised_batchnorm_differs(runs: Path):
    """The control: BatchNorm over 8 images per rank is another experiment, and the comparison sees it."""
    assert _max_excess(_weights(runs, "ddp-bn-unsynced", 2), _weights(runs, "ddp-bn", 1)) > 1e-4
    assert _done(runs, "ddp-bn-unsynced", 2)["batchnorm"] == {
        "layers": 2,
        "synced": False,
        "images": 8,
        "global_batch": 16,
    }
