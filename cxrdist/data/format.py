"""The on-disk shard format shared by the writer, the verifier and both loaders.

Layout of a shard root ``S``::

    S/_dataset.json                 writer config + its hash, source CSV hashes, split summary
    S/<split>/shard-NNNNNN.tar      WebDataset tar (USTAR, deterministic headers)
    S/<split>/shard-NNNNNN.idx      DALI index (the format ``wds2idx`` writes, v1.2)
    S/<split>/shard-NNNNNN.json     per-shard record (samples, sha256, label counts); marks the shard complete
    S/<split>/_info.json            per-split manifest, written once every shard of the split is complete
    S/skipped.jsonl                 keys skipped with --skip-bad, with the reason

A sample ``<key>`` (the NIH file name without ``.png``, e.g. ``00000001_000``) has three members:
``<key>.jpg`` (8-bit grayscale JPEG), ``<key>.cls`` (14 raw bytes, 0/1 in LABELS order: fixed width so DALI
can batch it) and ``<key>.json`` (metadata, boxes in the stored image's pixels). A sample's global index in
its split is its position in the split's shards (shard order, then member order): it is not stored.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrdist.files import write_failure
from cxrdist.labels import NUM_LABELS

FORMAT_VERSION = 1
COMPONENTS = ("jpg", "cls", "json")
IDX_VERSION = "v1.2"
_BLOCK = 512


class DataError(ValueError):
    """Bad input data, with the file, row, shard or key it came from."""


def shard_name(index: int) -> str:
    """Base name of shard ``index`` (no extension)."""
    return f"shard-{index:06d}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file and ``os.replace`` (never a partial file).

    A failed write (disk full) removes the temp file and raises an error naming ``path``: what was there
    before, and every shard already complete, is kept.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = "files already written are kept (complete shards are not rewritten); free space and rerun"
        raise write_failure(path, e, kept) from e
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (sorted keys, indented, trailing newline)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    """Read a JSON file, with an error naming the file if it is malformed."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON: {e}") from None


def encode_labels(labels: np.ndarray) -> bytes:
    """14 labels → 14 raw bytes."""
    arr = np.asarray(labels, dtype=np.uint8)
    if arr.shape != (NUM_LABELS,) or arr.max(initial=0) > 1:
        raise ValueError(f"labels must be a 0/1 vector of length {NUM_LABELS}, got {arr!r}")
    return arr.tobytes()


def decode_labels(raw: bytes, *, where: str = "") -> np.ndarray:
    """14 raw bytes → uint8 vector; error naming ``where`` on a wrong length."""
    if len(raw) != NUM_LABELS:
        raise ValueError(f"{where}: .cls has {len(raw)} bytes, expected {NUM_LABELS}")
    return np.frombuffer(raw, dtype=np.uint8).copy()


class TarShardWriter:
    """Writes a deterministic USTAR tar and records each member's data offset for the DALI index.

    Headers carry mtime 0, uid/gid 0 and mode 0644 so the same samples give byte-identical shards, and the
    checksum of a rewritten shard equals the first one's.
    """

    def __init__(self, fileobj: io.BufferedIOBase):
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 (closed in close())
        self._fileobj = fileobj
        self.index_lines: list[str] = []

    def add_sample(self, key: str, members: dict[str, bytes]) -> None:
        """Append one sample (members in COMPONENTS order) and its index line."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/' (webdataset and DALI split on '.')")
        parts = []
        for ext in COMPONENTS:
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            start = self._tar.offset
            self._tar.addfile(info, io.BytesIO(data))
            # USTAR with short names: exactly one 512-byte header precedes the data.
            parts.append(f"{ext} {start + _BLOCK} {len(data)} {key}.{ext}")
        self.index_lines.append(" ".join(parts))

    def close(self) -> str:
        """Finish the tar; return the DALI index text."""
        self._tar.close()
        return f"{IDX_VERSION} {len(self.index_lines)}\n" + "".join(line + "\n" for line in self.index_lines)


@dataclass(frozen=True)
class IndexEntry:
    """Where one sample's members lie in its tar."""

    key: str
    members: dict[str, tuple[int, int]]  # ext -> (data offset, size)


def read_index(idx_path: Path, tar_size: int | None = None) -> list[IndexEntry]:
    """Parse a DALI v1.2 index; check it against the tar's size when given.

    Raises:
        ValueError: naming the index file and line for a malformed index or one that does not fit its tar.
    """
    lines = Path(idx_path).read_text().splitlines()
    if not lines:
        raise DataError(f"{idx_path}: empty index")
    head = lines[0].split()
    if len(head) != 2 or head[0] != IDX_VERSION:
        raise DataError(f"{idx_path}: line 1: expected '{IDX_VERSION} <count>', got {lines[0]!r}")
    if int(head[1]) != len(lines) - 1:
        raise DataError(f"{idx_path}: header says {head[1]} samples, file has {len(lines) - 1}")
    entries = []
    for i, line in enumerate(lines[1:], 2):
        f = line.split()
        if len(f) % 4 or not f:
            raise DataError(f"{idx_path}: line {i}: malformed entry {line!r}")
        members, key = {}, None
        for j in range(0, len(f), 4):
            ext, off, size, name = f[j], int(f[j + 1]), int(f[j + 2]), f[j + 3]
            k = name[: -(len(ext) + 1)]
            if key is None:
                key = k
            if k != key or name != f"{k}.{ext}":
                raise DataError(f"{idx_path}: line {i}: member {name!r} does not belong to sample {key!r}")
            if tar_size is not None and off + size > tar_size:
                raise DataError(
                    f"{Path(idx_path).with_suffix('.tar')}: truncated or not the tar {idx_path} indexes "
                    f"(line {i}: {name} ends at byte {off + size}, past the tar's {tar_size} bytes)"
                )
            members[ext] = (off, size)
        entries.append(IndexEntry(key=key, members=members))
    return entries
