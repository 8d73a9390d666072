"""Key-aligned per-sample data written by one stage and joined to samples by a later one.

Format (one choice for every sidecar): ``<name>.npy`` — a NumPy array of shape (N, ...) whose row i belongs to
sample i of the split (its global index), opened memory-mapped so N never has to fit in RAM; ``<name>.keys.txt``
— the split's keys in index order, checked against the shards on open so a sidecar can never be joined to the
wrong samples; ``<name>.filled.npy`` — which rows are written (so a distributed, resumable writer can fill it
shard by shard and the reader can refuse a partial sidecar); ``<name>.json`` — dtype, shape, kind
(``image``: a per-sample map that follows the image's crop and flip; ``vector``: used as is) and notes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxrdist.data.format import DataError, atomic_write_json, read_json

KINDS = ("image", "vector")


def _paths(path: Path) -> tuple[Path, Path, Path, Path]:
    p = Path(path)
    return p.with_suffix(".npy"), p.with_suffix(".keys.txt"), p.with_suffix(".filled.npy"), p.with_suffix(".json")


def create_sidecar(
    path: str | Path,
    keys: list[str],
    shape: tuple[int, ...],
    dtype: str,
    kind: str,
    notes: dict[str, Any] | None = None,
) -> None:
    """Create (or keep, if it matches) an empty sidecar for ``keys`` with per-sample ``shape``."""
    if kind not in KINDS:
        raise ValueError(f"sidecar kind must be one of {KINDS}, got {kind!r}")
    arr_p, keys_p, filled_p, meta_p = _paths(Path(path))
    meta = {"shape": list(shape), "dtype": dtype, "kind": kind, "num_samples": len(keys), "notes": notes or {}}
    if meta_p.is_file() and keys_p.is_file():
        old = read_json(meta_p)
        if {k: old[k] for k in ("shape", "dtype", "kind", "num_samples")} == {
            k: meta[k] for k in ("shape", "dtype", "kind", "num_samples")
        } and keys_p.read_text().split() == list(keys):
            return
        raise DataError(f"{meta_p}: exists with another shape/dtype/keys; delete it or use another path")
    arr_p.parent.mkdir(parents=True, exist_ok=True)
    np.lib.format.open_memmap(arr_p, mode="w+", dtype=dtype, shape=(len(keys), *shape)).flush()
    np.save(filled_p, np.zeros(len(keys), dtype=bool))
    keys_p.write_text("".join(k + "\n" for k in keys))
    atomic_write_json(meta_p, meta)


def write_rows(path: str | Path, indices: np.ndarray, rows: np.ndarray) -> None:
    """Write rows at ``indices`` and mark them filled (one writer per row set; callers split rows by rank)."""
    arr_p, _, filled_p, _ = _paths(Path(path))
    arr = np.load(arr_p, mmap_mode="r+")
    arr[np.asarray(indices)] = rows
    arr.flush()
    del arr


def mark_filled(path: str | Path, indices: np.ndarray) -> None:
    """Mark rows as written (rank 0, after a barrier, with the union of every rank's indices)."""
    _, _, filled_p, _ = _paths(Path(path))
    filled = np.load(filled_p)
    filled[np.asarray(indices)] = True
    tmp = filled_p.with_name(filled_p.name + ".tmp.npy")
    np.save(tmp, filled)
    tmp.replace(filled_p)


def filled_mask(path: str | Path) -> np.ndarray:
    """Which rows are written."""
    return np.load(_paths(Path(path))[2])


class Sidecar:
    """A finished sidecar opened for reading, checked against the split's keys."""

    def __init__(self, path: str | Path, keys: list[str]):
        arr_p, keys_p, filled_p, meta_p = _paths(Path(path))
        for p in (arr_p, keys_p, filled_p, meta_p):
            if not p.is_file():
                raise DataError(f"{p}: sidecar file missing (did the stage that writes it finish?)")
        self.meta = read_json(meta_p)
        self.kind: str = self.meta["kind"]
        if keys_p.read_text().split() != list(keys):
            raise DataError(f"{keys_p}: the sidecar's keys differ from the split's shards (written for other shards?)")
        filled = np.load(filled_p)
        if not filled.all():
            missing = np.flatnonzero(~filled)
            raise DataError(f"{arr_p}: {len(missing)} row(s) never written, e.g. keys {[keys[i] for i in missing[:3]]}")
        self.array = np.load(arr_p, mmap_mode="r")

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Rows of the given samples (a copy)."""
        return np.ascontiguousarray(self.array[np.asarray(indices)])


def write_key_list(path: str | Path, keys: list[str]) -> None:
    """Write a key list (one key a line, sorted, unique) atomically."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text("".join(k + "\n" for k in sorted(set(keys))))
    tmp.replace(p)


def read_key_list(path: str | Path) -> list[str]:
    """Read a key list written by :func:`write_key_list`."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: key list missing")
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]
