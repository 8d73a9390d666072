"""Model tests run on CPU with a fixed thread count; the models they share are built once per session."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from cxrdist.models import build_model

# Measured on the 2-core machine while other jobs ran, this directory took 109 s with 2 intra-op threads and 35 s
# with 1 (OpenMP threads spin-wait for a descheduled sibling), so the default is 1, like the top-level conftest's
# OMP_NUM_THREADS=1. CXRDIST_TEST_THREADS=2 uses both cores on an idle machine.
TEST_THREADS = int(os.environ.get("CXRDIST_TEST_THREADS", "1"))


@pytest.fixture(autouse=True, scope="module")
def _test_threads() -> Iterator[None]:
    """Fix the intra-op thread count here, and give the previous setting back to the rest of the suite."""
    before = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(before)


_CACHE: dict[tuple, nn.Module] = {}


@pytest.fixture(scope="session")
def model_cache() -> Callable[..., nn.Module]:
    """``get(name, **kwargs)``: the registry's model in eval mode, seeded, built once per session."""

    def get(name: str, **kwargs: object) -> nn.Module:
        key = (name, tuple(sorted(kwargs.items())))
        if key not in _CACHE:
            torch.manual_seed(0)
            _CACHE[key] = build_model(name, **kwargs).eval()
        return _CACHE[key]

    return get
