"""The checkpoint save protocol under kills: a process killed (SIGKILL) at each step of a save in turn leaves a
run dir whose resubmission resumes and ends bit-identical to an uninterrupted run; disk-full errors name the
file and keep the previous checkpoint; recovery of the layouts a kill can leave."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import torch

from cxrdist.engine import checkpoint as ckpt_mod
from cxrdist.engine.checkpoint import (
    FAULT_ENV,
    MARKER,
    is_complete,
    latest_checkpoint,
    list_checkpoints,
    recover_checkpoints,
)
from cxrdist.engine.pipeline import read_done
from cxrdist.files import WriteFailed
from cxrdist.run.local import run_local
from testkit.tiny import tiny_bn_stages, tiny_cfg, tiny_stages

# 2 epochs of 2 steps, a checkpoint every 2 steps, keep 1: saves of step 2 (mid-run), step 2 again (epoch end:
# retire, switch, drop_old), step 4 (prunes step 2), step 4 again. N = which occurrence of the point is hit:
# the 2nd save for the points of every save, so that a complete checkpoint is there to resume from.
RUN = (
    "method.stages.train.epochs=2",
    "method.stages.train.max_steps_per_epoch=2",
    "engine.ckpt_every_steps=2",
    "engine.keep_last=1",
)
# point:occurrence -> what the kill must leave in ckpt/ (proof that it hit that step of the protocol)
CASES = {
    "tmp:2": {".step-00000002.tmp", "step-00000002"},
    "model:2": {".step-00000002.tmp", "step-00000002"},
    "rng:2": {".step-00000002.tmp", "step-00000002"},
    "state:2": {".step-00000002.tmp", "step-00000002"},
    "marker:2": {".step-00000002.tmp", "step-00000002"},
    "retire:1": {".step-00000002.tmp", ".step-00000002.old"},
    "switch:2": {"step-00000002", ".step-00000002.old"},
    "drop_old:1": {"step-00000002", ".step-00000002.old"},
    "prune:1": {".step-00000002.del", "step-00000004"},
    "epoch_end:1": {"step-00000002"},
}


def _weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(run / "stages" / "00_train" / name, weights_only=True)["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _job(target, *args: str) -> multiprocessing.Process:
    """The job to kill: a forked child (torch and cxrdist already imported: ~1 s instead of ~8 s for a fresh
    interpreter; OMP_NUM_THREADS=1 leaves no OpenMP pool to break in the child)."""
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    child.join(300)
    if child.is_alive():  # hung instead of killed: fail, without leaving it behind
        child.kill()
        child.join()
    return child


def _killed_run(shards: str, run: str, spec: str) -> None:
    os.environ[FAULT_ENV] = spec
    run_local(tiny_cfg(Path(shards), Path(run), *RUN), nproc=1, stages_fn=tiny_stages)


@pytest.fixture(scope="module")
def reference(shard_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("faults") / "ref"
    run_local(tiny_cfg(shard_root, run, *RUN), nproc=1, stages_fn=tiny_stages)
    return run


@pytest.mark.parametrize("case", list(CASES))
def test_kill_at_each_save_step_resumes_bit_identical(case: str, reference: Path, shard_root: Path, tmp_path: Path):
    run = tmp_path / "run"
    child = _job(_killed_run, str(shard_root), str(run), f"kill:{case}")  # SIGKILL at the point
    assert child.exitcode == -signal.SIGKILL, f"the job was not killed at {case} (exit {child.exitcode})"
    ckpt = run / "stages" / "00_train" / "ckpt"
    left = {p.name for p in ckpt.iterdir()}
    assert CASES[case] <= left, f"kill at {case} left {sorted(left)}"
    assert not (run / "stages" / "00_train" / "DONE.json").exists()

    run_local(tiny_cfg(shard_root, run, *RUN), nproc=1, stages_fn=tiny_stages)  # the resubmission
    log = (run / "logs" / "rank0.log").read_text()
    assert "resumed train from" in log
    assert _same(_weights(reference, "last.pt"), _weights(run, "last.pt"))
    assert _same(_weights(reference, "best.pt"), _weights(run, "best.pt"))
    history = read_done(run / "stages" / "00_train")["outputs"]["history"]
    assert history == read_done(reference / "stages" / "00_train")["outputs"]["history"]


def test_disk_full_names_the_file_and_keeps_the_previous_checkpoint(
    reference: Path, shard_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    run = tmp_path / "full"
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if ".step-00000004.tmp" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(WriteFailed) as err:
        run_local(tiny_cfg(shard_root, run, *RUN), nproc=1, stages_fn=tiny_stages)
    ckpt = run / "stages" / "00_train" / "ckpt"
    message = str(err.value)
    assert "\n" not in message and f"could not write {ckpt}/.step-00000004.tmp: no space left on device" in message
    assert f"previous checkpoint {ckpt}/step-00000002 is kept" in message
    assert [p.name for p in ckpt.iterdir()] == ["step-00000002"]  # the new one's .tmp was removed
    monkeypatch.setattr(torch, "save", real_save)
    run_local(tiny_cfg(shard_root, run, *RUN), nproc=1, stages_fn=tiny_stages)  # space freed: resubmit
    assert _same(_weights(reference, "last.pt"), _weights(run, "last.pt"))


def _killed_two_rank_run(shards: str, run: str, spec: str) -> None:
    os.environ[FAULT_ENV] = spec
    run_local(tiny_cfg(Path(shards), Path(run), *RUN), nproc=2, stages_fn=tiny_bn_stages)


def test_two_ranks_killed_at_the_epoch_boundary(shard_root: Path, tmp_path: Path):
    """2 ranks (gloo), BatchNorm: killed after epoch 0's last-step checkpoint, before its validation. The
    resubmission's history (train loss from the saved sums, validation with rank 0's buffers on every rank) and
    its weights equal the uninterrupted run's."""
    ref = tmp_path / "ref"
    run_local(tiny_cfg(shard_root, ref, *RUN), nproc=2, stages_fn=tiny_bn_stages)
    run = tmp_path / "run"
    child = _job(_killed_two_rank_run, str(shard_root), str(run), "kill:epoch_end")
    assert child.exitcode != 0 and "test fault: killed at epoch_end" in (run / "logs" / "rank0.log").read_text()
    assert read_done(run / "stages" / "00_train") is None
    run_local(tiny_cfg(shard_root, run, *RUN), nproc=2, stages_fn=tiny_bn_stages)
    assert "resumed train from" in (run / "logs" / "rank0.log").read_text()
    history = read_done(run / "stages" / "00_train")["outputs"]["history"]
    assert history == read_done(ref / "stages" / "00_train")["outputs"]["history"]
    assert _same(_weights(ref, "last.pt"), _weights(run, "last.pt"))
    assert _same(_weights(ref, "best.pt"), _weights(run, "best.pt"))


def _fake_checkpoint(path: Path, marker: bool = True) -> Path:
    path.mkdir(parents=True)
    for name in ("model_optim.pt", "rng-rank0.pt", "state.pt"):
        (path / name).write_bytes(name.encode() * 10)
    if marker:
        files = {p.name: p.stat().st_size for p in path.iterdir()}
        (path / MARKER).write_text(json.dumps({"step": 3, "world_size": 1, "files": files}))
    return path


def test_the_reported_layout_is_recovered(tmp_path: Path):
    """The layout of the report: step-N lost model_optim.pt to an interrupted deletion, the complete copy sits in
    .step-N.tmp. The old protocol took step-N as complete; now it is not listed and the copy is switched in."""
    root = tmp_path / "ckpt"
    final = _fake_checkpoint(root / "step-00000003")
    (final / "model_optim.pt").unlink()
    _fake_checkpoint(root / ".step-00000003.tmp")
    _fake_checkpoint(root / "step-00000001")
    assert not is_complete(final) and latest_checkpoint(root) == root / "step-00000001"
    done = recover_checkpoints(root)
    assert any("switched in .step-00000003.tmp" in d for d in done)
    assert any("removed .step-00000003.old" in d for d in done)
    assert [p.name for p in list_checkpoints(root)] == ["step-00000001", "step-00000003"]
    assert sorted(p.name for p in root.iterdir()) == ["step-00000001", "step-00000003"]


def test_recovery_drops_what_is_incomplete(tmp_path: Path):
    root = tmp_path / "ckpt"
    _fake_checkpoint(root / "step-00000002", marker=False)  # a marker-less (incomplete) dir
    _fake_checkpoint(root / ".step-00000004.tmp", marker=False)  # a save killed before its marker
    _fake_checkpoint(root / ".step-00000001.del")  # a pruning killed midway
    good = _fake_checkpoint(root / ".step-00000003.old")  # retired, and nothing replaced it
    truncated = _fake_checkpoint(root / "step-00000005")
    (truncated / "state.pt").write_bytes(b"x")  # a file shorter than its marker says
    recover_checkpoints(root)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000003"]
    assert is_complete(root / "step-00000003") and not good.exists()


def test_fault_spec_is_checked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(FAULT_ENV, "kill:nowhere")
    with pytest.raises(ValueError, match="POINT one of"):
        ckpt_mod.fault_point("tmp")
    monkeypatch.setenv(FAULT_ENV, "kill:tmp")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    ckpt_mod.fault_point("tmp")  # a requeued attempt is never stopped again


def test_leftover_that_cannot_be_deleted_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog):
    """E.g. NFS keeps a file a dead client held open: the leftover stays hidden, the resume goes on."""
    root = tmp_path / "ckpt"
    _fake_checkpoint(root / "step-00000003")
    _fake_checkpoint(root / ".step-00000003.old")

    def busy(path, *args, **kwargs):
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", busy)
    recover_checkpoints(root)
    assert "could not delete" in caplog.text and ".step-00000003.old" in caplog.text
    assert latest_checkpoint(root) == root / "step-00000003"
