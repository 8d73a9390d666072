"""A kill right after a mid-epoch checkpoint, in this process (the trainer's stages resume from it exactly)."""

from __future__ import annotations

import pytest

from cxrdist.engine.trainer import Trainer


class Killed(Exception):
    """Stands in for a SIGKILL right after the trainer's checkpoint of ``step``."""


def kill_after_checkpoint(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the trainer stop (raise :class:`Killed`) once its checkpoint of optimizer step ``step`` is on disk;
    the step must fall inside an epoch (asserted), so the resume starts part-way through it."""
    real = Trainer.checkpoint

    def checkpoint(self: Trainer) -> None:
        real(self)
        if self.state.step == step:
            assert self.train_loader.sampler.state.consumed > 0, "the kill must come mid-epoch"
            raise Killed(f"killed after the checkpoint of step {step}")

    monkeypatch.setattr(Trainer, "checkpoint", checkpoint)
