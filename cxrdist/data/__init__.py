"""Data: NIH ChestX-ray14 reading, the shard format (+ ``DataError``), writer, verify, sampler, transforms,
sidecars, and the shard loaders (``data.loaders``). The phantom lives apart, in ``cxrdist.phantom``."""
