"""What a TrainStage trains on and how: the trainer's hooks (strategy, batches, loss, validation, history).

The trainer (``trainer.py``) owns the loop: steps, accumulation, checkpoints with exact mid-epoch resume, the
schedule, ``best.pt``/``last.pt``. A stage's hooks say what a batch is (its loader), what is computed under autocast
and what the loss is, how an epoch is validated and what its history row holds. :class:`ClassifierHooks` (the
default) trains a classifier on the shards and validates it by val loss and AUROC; the U-Net of ``lungheart`` and
the alignment net of ``diseasemask`` bring their own (``methods/``).
"""

from __future__ import annotations

import abc
import logging
import math
from typing import Any

import numpy as np
import torch

from cxrdist import dist
from cxrdist.engine.inference import gather_to_main, run_inference
from cxrdist.engine.losses import build_loss
from cxrdist.eval.classification import auroc_per_class

logger = logging.getLogger(__name__)
Trainer = Any  # the trainer passes itself to its hooks (trainer.py imports this module, not the reverse)


class TrainHooks(abc.ABC):
    """The parts of training that differ between networks; subclasses override what they need (``loss`` always)."""

    select = True  # keep best.pt by the recipe's select_metric (False: only last.pt, e.g. no validation)

    def strategy_options(self, trainer: Trainer) -> dict[str, Any]:
        """``build_strategy`` name and options (default: the config's engine)."""
        eng = trainer.ctx.cfg.engine
        return {
            "name": eng.strategy,
            "precision": eng.precision,
            "grad_clip": eng.grad_clip,
            "zero_stage": eng.zero_stage,
            "sync_bn": eng.sync_bn,
            "channels_last": eng.channels_last,
            "compile": eng.compile,
        }

    def setup(self, trainer: Trainer) -> None:
        """Build what the other hooks use (called once the model is wrapped)."""
        return None  # the default hooks build nothing

    def train_loader(self, trainer: Trainer) -> Any:
        """The training loader: batches with ``index``, resumable (``state_dict``), a ``sampler`` and ``epoch``."""
        return trainer.ctx.build_loader(trainer.stage, train=True, micro=trainer.micro, accum=trainer.accum)

    def forward(self, trainer: Trainer, model: torch.nn.Module, batch: dict[str, Any]) -> Any:
        """What runs under autocast (default: the stage's forward, logits)."""
        return trainer.stage.forward(model, batch)

    @abc.abstractmethod
    def loss(self, trainer: Trainer, out: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to back-propagate and named extra terms whose epoch means go into the history."""

    def validate(self, trainer: Trainer) -> dict[str, Any]:
        """End-of-epoch metrics (the same on every rank); must hold the recipe's select_metric when ``select``."""
        return {}

    def history_row(self, epoch: int, train_loss: float, extras: dict[str, float], metrics: dict[str, Any]) -> dict:
        """The epoch's row of DONE.json's ``history``."""
        return {"epoch": epoch, "train_loss": train_loss, **extras, **metrics}

    def log_values(self, metrics: dict[str, Any]) -> dict[str, float]:
        """The end-of-epoch scalars for the tracker (nested dicts flattened as ``key/name``)."""
        out: dict[str, float] = {}
        for k, v in metrics.items():
            if isinstance(v, dict):
                out |= {f"{k}/{n}": x for n, x in v.items()}
            else:
                out[k] = v
        return out

    def describe(self, metrics: dict[str, Any]) -> str:
        """The end-of-epoch metrics in the epoch log line."""
        return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and not math.isnan(v))


class ClassifierHooks(TrainHooks):
    """A classifier on the shards: the recipe's loss (batch-weighted over the global batch), val loss and AUROC."""

    def setup(self, trainer: Trainer) -> None:
        self.loss_fn = build_loss(trainer.recipe.loss, dict(trainer.recipe.loss_args))
        self.val_loader = trainer.ctx.build_loader(trainer.stage, train=False, split="val")
        self._warned: set[str] = set()

    def loss(self, trainer: Trainer, out: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss_fn(out, batch["labels"], batch["step_label_counts"]), {}  # P, N of the global batch

    def validate(self, trainer: Trainer) -> dict[str, Any]:
        model, stage = trainer.strategy.unwrap(), trainer.stage
        dist.broadcast_buffers(model)  # every rank validates rank 0's model (the one saved), buffers included
        local = run_inference(model, self.val_loader, forward=stage.forward, autocast=trainer.strategy.autocast)
        placed = gather_to_main(local, self.val_loader.num_samples)
        metrics: dict[str, Any] = {}
        if placed is not None:
            labels = self.val_loader.reader.labels
            logits = torch.from_numpy(placed["logits"])
            metrics["val_loss"] = float(self.loss_fn(logits, torch.from_numpy(labels.astype(np.float32))))
            res = auroc_per_class(labels, placed["logits"], log=False)
            for w in res["warnings"]:  # the val labels are the same every epoch: say each warning once
                if w not in self._warned:
                    self._warned.add(w)
                    logger.warning("%s: val %s", stage.name, w)
            metrics["val_auroc"] = float("nan") if res["mean"] is None else float(res["mean"])
            metrics.update({f"val_auroc/{k}": v for k, v in res["per_class"].items() if v is not None})
        return dist.broadcast_object(metrics)

    def history_row(self, epoch: int, train_loss: float, extras: dict[str, float], metrics: dict[str, Any]) -> dict:
        return {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": metrics["val_loss"],
            "val_auroc": metrics["val_auroc"],
        }

    def log_values(self, metrics: dict[str, Any]) -> dict[str, float]:
        return dict(metrics)

    def describe(self, metrics: dict[str, Any]) -> str:
        return f"val loss {metrics['val_loss']:.4f}, val AUROC {metrics['val_auroc']:.4f}"
