"""Place gathered rows by their global sample index (rank-0 side of the distributed evaluator).

A distributed sampler pads the dataset so every rank gets the same number of samples, so after an all_gather
some indices arrive twice. Writing rows into a preallocated array by index (dinov2 ``eval/utils.py``'s
``index_copy_``) makes those duplicates collapse; this module does that in numpy and checks what dinov2 does
not: that every index was filled, that duplicates agree, and that no index is out of range.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

_SHOW = 10  # how many offending indices an error message lists


def _listing(values: np.ndarray) -> str:
    head = ", ".join(str(v) for v in values[:_SHOW].tolist())
    more = f", ... ({len(values)} in all)" if len(values) > _SHOW else f" ({len(values)} in all)"
    return f"[{head}{more}]"


def _rows_differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per leading position, whether two equally shaped row arrays differ (NaN equals NaN)."""
    diff = a != b
    if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating):
        diff &= ~(np.isnan(a) & np.isnan(b))
    return diff.reshape(len(diff), -1).any(axis=1)


def place_by_index(
    indices: np.ndarray, rows: np.ndarray, num_samples: int, allow_duplicates_identical: bool = True
) -> np.ndarray:
    """Scatter gathered ``rows`` into a ``(num_samples, ...)`` array at their global ``indices``.

    Args:
        indices: ``(N_gathered,)`` integer global sample indices, any order, possibly repeated (sampler padding).
        rows: ``(N_gathered, ...)`` values (logits, labels, ...) aligned with ``indices``.
        num_samples: size of the split; every index in ``0..num_samples-1`` must appear.
        allow_duplicates_identical: accept an index seen more than once if all its rows are identical
            (NaN counts as equal to NaN); if False, any repeat is an error.

    Returns:
        ``(num_samples, ...)`` array with the dtype of ``rows``; row ``i`` is the row gathered for index ``i``.

    Raises:
        ValueError: shapes disagree, an index is not an integer or is out of range, an index is never filled,
            or an index is repeated with different rows (or at all, when duplicates are not allowed).
    """
    idx = np.asarray(indices)
    vals = np.asarray(rows)
    if idx.ndim != 1 or vals.ndim < 1 or len(idx) != len(vals):
        raise ValueError(f"indices must be (N,) and rows (N, ...); got {idx.shape} and {vals.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64, copy=False)
    out_of_range = np.unique(idx[(idx < 0) | (idx >= num_samples)])
    if out_of_range.size:
        raise ValueError(f"indices out of range 0..{num_samples - 1}: {_listing(out_of_range)}")

    unique, first, inverse, counts = np.unique(idx, return_index=True, return_inverse=True, return_counts=True)
    repeated = unique[counts > 1]
    if repeated.size and not allow_duplicates_identical:
        raise ValueError(f"indices gathered more than once: {_listing(repeated)}")
    if repeated.size:
        # Compare only the repeated rows with the first row of their index: padding is a few rows per rank,
        # so this avoids copying the whole (possibly large, e.g. heatmap) array.
        dup = np.flatnonzero(counts[inverse] > 1)
        conflicting = np.unique(idx[dup[_rows_differ(vals[dup], vals[first[inverse[dup]]])]])
        if conflicting.size:
            raise ValueError(f"indices gathered more than once with different rows: {_listing(conflicting)}")
        logger.debug("place_by_index: %d indices repeated with identical rows (sampler padding)", repeated.size)

    if unique.size != num_samples:
        missing = np.setdiff1d(np.arange(num_samples), unique, assume_unique=True)
        raise ValueError(f"{missing.size} of {num_samples} indices never filled: {_listing(missing)}")
    out = np.empty((num_samples, *vals.shape[1:]), dtype=vals.dtype)
    out[idx] = vals  # repeated indices carry identical rows, so the write order does not matter
    return out
