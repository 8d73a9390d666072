"""Evaluation: per-class AUROC, weakly supervised localization protocols, figures and report tables.

The modules here are pure functions over numpy arrays (rank-0 compute); they never name a method. Import the
submodules directly (``cxrdist.eval.classification``, ``.localization``, ``.gather``, ``.figures``,
``.tables``) so that, e.g., computing AUROC does not import matplotlib. Intervals and tests: ``.delong`` (per-class
DeLong CIs, paired DeLong test), ``.bootstrap`` (patient-clustered bootstrap, paired), ``.stats`` (Holm, key checks).
"""
