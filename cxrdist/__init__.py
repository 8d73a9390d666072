"""cxrdist: distributed training and evaluation for NIH ChestX-ray14 classification and localization."""

__version__ = "0.1.0"
