"""Shard loaders: ``base`` (interface, sampling, joins), ``pil`` (torch/PIL), ``dali``, ``factory``."""
