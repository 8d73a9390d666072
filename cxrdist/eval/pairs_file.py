"""The per-(image, class) false-positive counts of a localization result, kept beside ``metrics.json``, not in it.

:func:`~cxrdist.eval.localization.evaluate_localization` returns ``per_pair``: each (image, class) pair with a
ground-truth box and its FP count at every binarisation threshold, grid (IoU, IoBB) and T: what Wang et al.'s AFP
averages and the patient bootstrap resamples. On the NIH bbox split that is ~880 pairs × 2 thresholds × 14 T, some
21,000 lines of an indented ``metrics.json`` that a reader opens for its figures. So the evaluator writes them to
``localization_pairs.npz`` in the split's folder (the keys, the classes, one ``(rows, pairs)`` count array and its row
index) and ``metrics.json`` keeps a pointer: ``per_pair: {file, num_pairs}``. :func:`read_pairs` puts them back
(cxrdist/eval/report.py's ``load_run``, which the report, compare.py and the intervals read through); a
``metrics.json`` that still holds them inline, or that predates them (no AFP interval then), reads as before.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

PAIRS_FILE = "localization_pairs.npz"


def write_pairs(loc: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """Write ``loc["per_pair"]`` to ``folder/localization_pairs.npz``; return ``loc`` with the pointer instead."""
    pairs = loc.get("per_pair")
    if not pairs or "file" in pairs:
        return dict(loc)
    index = [[tk, grid, t] for tk, grids in pairs["fp"].items() for grid, by_t in grids.items() for t in by_t]
    n = len(pairs["key"])
    fp = np.array([pairs["fp"][tk][grid][t] for tk, grid, t in index], dtype=np.int32).reshape(len(index), n)
    tmp = folder / f".{PAIRS_FILE}.tmp.npz"
    np.savez_compressed(tmp, key=np.array(pairs["key"], dtype=str), class_idx=np.asarray(pairs["class_idx"], np.int64),
                        fp=fp, index=np.array(json.dumps(index)))  # fmt: skip
    os.replace(tmp, folder / PAIRS_FILE)  # complete or absent
    return dict(loc) | {"per_pair": {"file": PAIRS_FILE, "num_pairs": n}}


def read_pairs(loc: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """``loc`` with ``per_pair`` read back from ``folder`` where ``metrics.json`` points to it (else as it is); a
    missing or mismatched file is a one-line error naming it."""
    pointer = loc.get("per_pair") or {}
    if "file" not in pointer:
        return dict(loc)
    path = Path(folder) / pointer["file"]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {folder / 'metrics.json'} keeps its per-(image, class) false "
                                "positives there: re-run launch/evaluate.py on that run (bbox split)")  # fmt: skip
    with np.load(path, allow_pickle=False) as z:
        keys, cls, fp, index = z["key"].tolist(), z["class_idx"].tolist(), z["fp"], json.loads(str(z["index"]))
    if len(keys) != pointer.get("num_pairs") or fp.shape != (len(index), len(keys)):
        raise ValueError(f"{path}: holds {len(keys)} pairs, {folder / 'metrics.json'} says {pointer.get('num_pairs')}"
                         "; re-run launch/evaluate.py on that run for the bbox split")  # fmt: skip
    counts: dict[str, dict[str, dict[str, list[int]]]] = {}
    for (tk, grid, t), row in zip(index, fp):
        counts.setdefault(tk, {}).setdefault(grid, {})[t] = row.tolist()
    return dict(loc) | {"per_pair": {"key": keys, "class_idx": cls, "fp": counts}}
