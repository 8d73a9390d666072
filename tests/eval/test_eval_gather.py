"""place_by_index: sampler padding collapses, gaps and conflicting duplicates are errors."""

from __future__ import annotations

import numpy as np
import pytest

from cxrdist.eval.gather import place_by_index


def _gathered(num: int, world: int, rows: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices/rows as a padded DistributedSampler + all_gather would deliver them, then shuffled."""
    per_rank = -(-num // world)
    padded = np.concatenate([np.arange(num), np.arange(per_rank * world - num)])  # pad by wrapping around
    indices = np.concatenate([padded[r::world] for r in range(world)])
    order = np.random.default_rng(seed).permutation(len(indices))
    return indices[order], rows[indices[order]]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_padding_duplicates_collapse(world: int) -> None:
    logits = np.random.default_rng(1).standard_normal((103, 14)).astype(np.float32)
    idx, rows = _gathered(103, world, logits)
    np.testing.assert_array_equal(place_by_index(idx, rows, 103), logits)


def test_one_dimensional_and_nan_rows() -> None:
    values = np.arange(10, dtype=np.float64)
    values[4] = np.nan
    idx, rows = _gathered(10, 4, values)
    out = place_by_index(idx, rows, 10)
    np.testing.assert_array_equal(out, values)  # NaN == NaN for assert_array_equal


def test_missing_index_is_named() -> None:
    logits = np.zeros((50, 14))
    idx = np.delete(np.arange(50), [42])
    with pytest.raises(ValueError, match=r"1 of 50 indices never filled: \[42 \(1 in all\)\]"):
        place_by_index(idx, logits[idx], 50)


def test_many_missing_lists_first_few_and_count() -> None:
    idx = np.arange(0, 100, 2)
    with pytest.raises(ValueError, match=r"50 of 100 .*\[1, 3, 5, 7, 9, 11, 13, 15, 17, 19, \.\.\. \(50 in all\)\]"):
        place_by_index(idx, np.zeros((50, 2)), 100)


def test_conflicting_duplicate_is_named() -> None:
    idx = np.array([0, 1, 2, 3, 2, 1])
    rows = np.array([[0.0], [1.0], [2.0], [3.0], [2.0], [1.5]])  # index 1 arrives twice with different rows
    with pytest.raises(ValueError, match=r"different rows: \[1 \(1 in all\)\]"):
        place_by_index(idx, rows, 4)


def test_duplicates_refused_when_not_allowed() -> None:
    idx, rows = _gathered(10, 4, np.arange(10))
    with pytest.raises(ValueError, match="more than once"):
        place_by_index(idx, rows, 10, allow_duplicates_identical=False)
    np.testing.assert_array_equal(place_by_index(np.arange(10)[::-1], np.arange(10)[::-1], 10), np.arange(10))


def test_out_of_range_and_bad_dtype() -> None:
    with pytest.raises(ValueError, match=r"out of range 0..4: \[-1, 5 \(2 in all\)\]"):
        place_by_index(np.array([0, 1, 2, 3, 4, 5, -1]), np.zeros(7), 5)
    with pytest.raises(ValueError, match="integers"):
        place_by_index(np.array([0.0, 1.0]), np.zeros(2), 2)
    with pytest.raises(ValueError, match="rows"):
        place_by_index(np.arange(3), np.zeros(4), 3)
