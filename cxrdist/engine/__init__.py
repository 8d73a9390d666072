"""Training machinery shared by every method: stages and pipeline, trainer, strategies, checkpoints, losses, optim,
and distributed inference with the evaluator that drives a model over a split (``inference``, ``evaluator``)."""
