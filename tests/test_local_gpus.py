"""Local launch checks that need no GPU."""

from __future__ import annotations

import pytest
import torch

from cxrdist import job
from cxrdist.cli import UsageError


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch: pytest.MonkeyPatch):
    """NCCL cannot put two ranks on one GPU: say so before NCCL's "Duplicate GPU detected"."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError, match="2 ranks on this node but 1 visible GPU"):
        job.run_local(None, nproc=2)  # refused before the config is even looked at
