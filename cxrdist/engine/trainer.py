"""The training loop every method's train stages run: epochs, steps, validation, checkpoints, resume.

Exact resume: a checkpoint is taken only after an optimizer step and holds model, optimizer, scheduler, every
rank's RNG, the loader position and the trainer state; restarting from it replays the same batches with the
same augmentation, so a run killed mid-epoch ends with the same weights as an uninterrupted one (CPU, fp32).
What a batch is, the loss, validation and the history row come from the stage's hooks (``train_hooks.py``): by
default a classifier on the shards, validated on ``val`` after each epoch (loss and AUROC); lungheart's U-Net and
diseasemask's alignment net run through the same loop with their own hooks. The best model by the recipe's
``select_metric`` is kept as ``best.pt``. The test split is never seen here.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrdist import dist
from cxrdist.engine.checkpoint import (
    fault_point,
    latest_checkpoint,
    load_checkpoint,
    recover_checkpoints,
    save_checkpoint,
    save_model_weights,
)
from cxrdist.engine.optim import build_optimizer, build_scheduler, derive_batch, step_scheduler
from cxrdist.engine.stages import StageContext, TrainStage
from cxrdist.engine.strategy import Strategy, build_strategy, log_batchnorm
from cxrdist.engine.train_hooks import ClassifierHooks, TrainHooks

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A NaN/inf loss: the run stops; the last complete checkpoint is left as it was."""


@dataclass
class TrainerState:
    """What the loop itself must remember across a restart."""

    step: int = 0  # optimizer steps
    epochs_done: int = 0  # epochs whose end-of-epoch work (validation, schedule, best) is done
    best: float | None = None
    best_epoch: int | None = None
    loss_sum: float = 0.0  # this epoch's micro-batch losses summed over ranks (for an exact epoch mean)
    loss_count: int = 0
    extra_sums: dict[str, float] = field(default_factory=dict)  # the hooks' extra loss terms, summed like loss_sum
    history: list[dict[str, Any]] = field(default_factory=list)


def _better(metric: str, new: float, old: float | None) -> bool:
    if old is None or math.isnan(old):
        return True  # the first epoch always sets a best model (even with an undefined metric)
    return new > old if metric == "val_auroc" else new < old


class Trainer:
    """Runs one TrainStage to completion (resuming from its last checkpoint)."""

    def __init__(self, ctx: StageContext, stage: TrainStage):
        self.ctx, self.stage, self.recipe = ctx, stage, stage.recipe
        self.hooks: TrainHooks = stage.hooks if stage.hooks is not None else ClassifierHooks()
        cfg, env = ctx.cfg, ctx.env
        self.micro, self.accum = derive_batch(self.recipe.global_batch, env.world_size, cfg.engine.max_batch_per_rank)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = stage.build_model(ctx)
        if stage.init_from is not None:
            stage.init_from(ctx, model)
        self.optimizer = build_optimizer(model.parameters(), self.recipe.optim)
        self.scheduler = build_scheduler(self.optimizer, self.recipe.schedule)
        options = self.hooks.strategy_options(self)
        name = options.pop("name")
        self.strategy: Strategy = build_strategy(name, env, accum=self.accum, micro_batch=self.micro, **options)
        self.strategy.wrap(model, self.optimizer)
        self.batchnorm = self.strategy.batchnorm_record(self.recipe.global_batch)
        self.hooks.setup(self)
        self.train_loader = self.hooks.train_loader(self)
        self.state = TrainerState()
        self.ckpt_root = ctx.stage_dir / "ckpt"
        if env.is_main:
            logger.info(
                "%s: global batch %d = %d ranks × %d per rank × %d accumulation; %d steps/epoch",
                stage.name,
                self.recipe.global_batch,
                env.world_size,
                self.micro,
                self.accum,
                len(self.train_loader) // self.accum,
            )
            logger.info("%s: %s on %s", stage.name, self.strategy.fast.describe(), env.device)
            log_batchnorm(stage.name, self.batchnorm, env.world_size, self.micro, self.accum)

    # --- checkpoints -----------------------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from the newest complete checkpoint of this stage, if any (rank 0 recovers and picks it)."""
        found: tuple[Path | None, str | None] = (None, None)
        if self.ctx.env.is_main:
            try:
                recover_checkpoints(self.ckpt_root)
                found = (latest_checkpoint(self.ckpt_root), None)
            except OSError as e:
                found = (None, f"{self.ckpt_root}: could not recover interrupted checkpoints: {e}")
        # One listing, broadcast: on a shared filesystem another node's listing may lag rank 0's renames.
        path, error = dist.broadcast_object(found)
        if error is not None:
            raise RuntimeError(error)
        if path is None:
            return
        saved = load_checkpoint(path, self.strategy)
        dist.broadcast_buffers(self.strategy.unwrap())
        if self.scheduler is not None and saved.get("scheduler") is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        self.train_loader.load_state_dict(saved["loader"])
        self.state = TrainerState(**saved["trainer"])
        logger.info(
            "resumed %s from %s (step %d, epoch %d)", self.stage.name, path, self.state.step, self.train_loader.epoch
        )

    def checkpoint(self) -> None:
        """Collective save of everything an exact resume needs."""
        state = {
            "trainer": asdict(self.state),
            "loader": self.train_loader.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "tracker_id": self.ctx.tracker.run_id,
        }
        save_checkpoint(self.ckpt_root, self.state.step, self.strategy, state, self.ctx.cfg.engine.keep_last)
        self._last_ckpt_time = time.monotonic()

    # --- loop ------------------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train for the recipe's epochs; return the stage's outputs for DONE.json."""
        self.resume()
        self._last_ckpt_time = time.monotonic()
        epochs = self.recipe.epochs
        while self.state.epochs_done < epochs:
            t0 = time.perf_counter()
            if self.train_loader.epoch == self.state.epochs_done:
                train_loss = self._run_epoch()
            else:  # killed after the epoch's last step but before its end-of-epoch work: its sums were saved
                train_loss = self.state.loss_sum / max(self.state.loss_count, 1)
            fault_point("epoch_end", self.ctx.env.rank)
            self._end_of_epoch(train_loss, t0)
            self.checkpoint()
        model = self.strategy.unwrap()
        if self.ctx.env.is_main:
            save_model_weights(self.ctx.stage_dir / "last.pt", model, {"step": self.state.step})
        dist.barrier()
        return {
            "best": self.state.best,
            "best_epoch": self.state.best_epoch,
            "select_metric": self.recipe.select_metric,
            "steps": self.state.step,
            "history": self.state.history,
            "weights": "best.pt",
            "last_weights": "last.pt",
            "global_batch": self.recipe.global_batch,
            "micro_batch": self.micro,
            "accum": self.accum,
            "world_size": self.ctx.env.world_size,
            "batchnorm": self.batchnorm,
        }

    def _sync(self, loss: torch.Tensor, extras: dict[str, torch.Tensor]) -> tuple[bool, bool, float, list[float]]:
        """One tiny all-reduce per micro-step: (non-finite loss on any rank, checkpoint due, loss summed over ranks,
        each extra term summed over ranks).

        Summing the loss here makes the epoch's mean loss part of rank 0's checkpointed state, exact across
        a restart.
        """
        env, eng = self.ctx.env, self.ctx.cfg.engine
        due = env.is_main and (time.monotonic() - self._last_ckpt_time) / 60.0 >= eng.ckpt_every_minutes
        loss = loss.detach().double()
        finite = torch.isfinite(loss)
        # Built on the device without host syncs; one .tolist() after the all-reduce reads them all.
        terms = [torch.where(finite, v.detach().double(), 0.0) for v in extras.values()]
        t = torch.stack([(~finite).double(), torch.full_like(loss, float(due)), torch.where(finite, loss, 0.0), *terms])
        dist.all_reduce_sum(t)
        bad, due_any, loss_sum, *extra_sums = t.tolist()
        return bad > 0, due_any > 0, loss_sum, extra_sums

    def _run_epoch(self) -> float:
        eng, env, model = self.ctx.cfg.engine, self.ctx.env, self.strategy.model
        model.train()
        recent: list[float] = []
        per_step = self.micro * env.world_size  # images of one micro-step over all ranks
        bar = self.ctx.progress(
            len(self.train_loader) * per_step,
            f"{self.stage.name} epoch {self.train_loader.epoch + 1}/{self.recipe.epochs}",  # as the epoch lines
            initial=self.train_loader.sampler.state.consumed,  # a resumed epoch starts part-way
        )
        t0, seen = time.perf_counter(), 0
        if self.train_loader.sampler.state.consumed == 0:
            self.state.loss_sum, self.state.loss_count, self.state.extra_sums = 0.0, 0, {}
        for batch in self.train_loader:
            with self.strategy.autocast():
                out = self.hooks.forward(self, model, batch)
            loss, extras = self.hooks.loss(self, out, batch)
            bad, due, loss_sum, extra_sums = self._sync(loss.detach(), extras)
            if bad:
                raise NonFiniteLossError(
                    f"{self.stage.name}: non-finite loss at epoch {self.train_loader.epoch}, step {self.state.step}; "
                    f"stopping. Last good checkpoint: {latest_checkpoint(self.ckpt_root)}"
                )
            stepped = self.strategy.backward(loss)
            self.state.loss_sum += loss_sum
            self.state.loss_count += env.world_size
            for k, v in zip(extras, extra_sums):
                self.state.extra_sums[k] = self.state.extra_sums.get(k, 0.0) + v
            recent.append(loss_sum / env.world_size)
            seen += len(batch["index"]) * env.world_size
            bar.update(len(batch["index"]) * env.world_size)
            if not stepped:
                continue
            self.state.step += 1
            if self.state.step % eng.log_every_steps == 0:
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                self.ctx.tracker.log(
                    {
                        "train/loss": float(np.mean(recent[-self.accum * eng.log_every_steps :])),
                        "train/lr": self.optimizer.param_groups[0]["lr"],
                        "train/images_per_s": rate,
                    },
                    step=self.state.step,
                    prefix=self.stage.name,
                )
            if self.state.step % eng.ckpt_every_steps == 0 or due:
                self.checkpoint()
        bar.close()
        return self.state.loss_sum / max(self.state.loss_count, 1)

    def _end_of_epoch(self, train_loss: float, t0: float) -> None:
        epoch, hooks = self.state.epochs_done, self.hooks
        count = max(self.state.loss_count, 1)
        extras = {k: v / count for k, v in self.state.extra_sums.items()}
        metrics = hooks.validate(self)
        step_scheduler(self.scheduler, {"train_loss": train_loss, **metrics})
        key = self.recipe.select_metric
        if hooks.select and key not in metrics:
            raise ValueError(f"select_metric {key!r} is not computed (have {sorted(metrics)})")
        if hooks.select and _better(key, metrics[key], self.state.best):
            self.state.best, self.state.best_epoch = metrics[key], epoch
            if self.ctx.env.is_main:
                save_model_weights(
                    self.ctx.stage_dir / "best.pt",
                    self.strategy.unwrap(),
                    {"epoch": epoch, key: metrics[key], "step": self.state.step},
                )
        self.state.history.append(hooks.history_row(epoch, train_loss, extras, metrics))
        self.state.epochs_done += 1
        values = {f"val/{k}": v for k, v in hooks.log_values(metrics).items()}
        values |= {f"train/epoch_{k}": v for k, v in extras.items()}  # the hooks' extra terms, epoch means
        self.ctx.tracker.log(values | {"epoch": epoch}, step=self.state.step, prefix=self.stage.name)
        if self.ctx.env.is_main:
            logger.info(
                "%s epoch %d/%d: train loss %.4f, %s%s, %.1f s",
                self.stage.name,
                epoch + 1,
                self.recipe.epochs,
                train_loss,
                hooks.describe({**extras, **metrics}),
                " (best)" if hooks.select and self.state.best_epoch == epoch else "",
                time.perf_counter() - t0,
            )
        dist.barrier()
