"""Make ``cxrdist`` importable when the checkout is not installed into the venv (plain ``.venv/bin/pytest``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# Only a fallback: an installed (or editable) cxrdist, or pytest's pythonpath setting, takes precedence.
if importlib.util.find_spec("cxrdist") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
