"""Training machinery shared by every method: strategies, trainer, checkpoints, stages, pipeline."""
