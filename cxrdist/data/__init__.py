"""Data: NIH ChestX-ray14 reading, the phantom, shards and loaders."""
