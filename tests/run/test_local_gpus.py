"""Local launch checks that need no GPU."""

from __future__ import annotations

import pytest
import torch

from cxrdist.cli import UsageError
from cxrdist.run import local


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch: pytest.MonkeyPatch):
    """NCCL cannot put two ranks on one GPU: say so before NCCL's "Duplicate GPU detected"."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError, match="2 ranks on this node but 1 visible GPU"):
        local.run_local(None, nproc=2)  # refused before the config is even looked at


def test_each_rank_takes_its_share_of_the_cpus(monkeypatch: pytest.MonkeyPatch):
    """Without OMP_NUM_THREADS, ranks split the CPUs (torch's default gives every rank all of them)."""
    from cxrdist.dist import DistEnv, cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(local.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert cpu_threads(DistEnv(local_world_size=2)) == 4 and cpu_threads(DistEnv(local_world_size=16)) == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert cpu_threads(DistEnv(local_world_size=2)) == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads(DistEnv(local_world_size=2)) == 3
