"""The version of ``metrics.json`` (what the evaluator writes, what the report reads).

Version 2 names each localization result by what it measures (``acc_at_iou``, ``best_box_iou``,
``acc_afp_at_overlap``) and says which paper's table each is compared with (``localization.compared_with``);
version 1 (no ``schema_version`` key) keyed them by the papers' authors (``kim``, ``fang``, ``wang``).
Within version 2, ``localization.per_pair`` (the per-(image, class) FP counts) is either inline (older files), a
pointer ``{file, num_pairs}`` to ``localization_pairs.npz`` beside the file (cxrdist/eval/pairs_file.py), or absent
(before it was kept: no AFP interval); every form reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRICS_SCHEMA = 2


def check_metrics_schema(metrics: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """``metrics`` if it is of :data:`METRICS_SCHEMA`, else a one-line ValueError naming the file and the fix."""
    found = metrics.get("schema_version", 1)
    if found != METRICS_SCHEMA:
        # RUN/eval/<split>/metrics.json (launch/evaluate.py) or RUN/stages/NN_name/<split>/metrics.json
        run = Path(path).parents[2] if Path(path).parent.parent.name == "eval" else Path(path).parents[3]
        raise ValueError(
            f"{path}: metrics.json of schema {found}, this cxrdist reads schema {METRICS_SCHEMA}; rewrite it with "
            f"the current code: python launch/evaluate.py {run}"
        )
    return metrics
