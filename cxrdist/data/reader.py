"""Random access to one split's shards through their DALI indexes, shared by both loaders.

Both loaders read samples by global index (position in the split) rather than streaming tars, because the
epoch order must be a pure function of (seed, epoch), identical for any number of workers, resumable at any
step and able to over-sample a key list; a stream with a shuffle buffer can do none of these.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrdist.data.format import COMPONENTS, DataError, decode_labels, read_index, read_json


@dataclass(frozen=True)
class SampleRef:
    """Where a sample's members are: shard number and (offset, size) per component."""

    shard: int
    jpg: tuple[int, int]
    cls: tuple[int, int]
    json: tuple[int, int]


class ShardReader:
    """One split of a shard root: keys, labels and random access to every member.

    Opening checks every shard's index against the checksum and its tar against the size recorded in the
    split's manifest, the index against its tar (sizes, members present), and optionally the writer config
    hash the caller expects; all labels are loaded once (14 bytes a sample).
    """

    def __init__(self, root: str | Path, split: str, expected_config_hash: str | None = None):
        self.root, self.split = Path(root), split
        info_path = self.root / split / "_info.json"
        if not info_path.is_file():
            raise DataError(f"{info_path}: missing; write the shards first (launch/write_shards.py) or check data.root")
        info = read_json(info_path)
        header = read_json(self.root / "_dataset.json")
        if info["config_hash"] != header["config_hash"]:
            raise DataError(
                f"{info_path}: written by writer config {info['config_hash']}, but "
                f"{self.root / '_dataset.json'} says {header['config_hash']}: mixed shard sets"
            )
        if expected_config_hash and header["config_hash"] != expected_config_hash:
            raise DataError(
                f"{self.root}: shards have writer config {header['config_hash']}, this run was started "
                f"on {expected_config_hash}; point data.root at the original shards"
            )
        self.config_hash: str = header["config_hash"]
        self.tars = [self.root / split / s["shard"] for s in info["shards"]]
        self.refs: list[SampleRef] = []
        self.keys: list[str] = []
        for i, (tar, record) in enumerate(zip(self.tars, info["shards"])):
            self._check_manifest(tar, record, info_path)
            self._index_shard(i, tar)
        if len(self.keys) != info["num_samples"]:
            raise DataError(f"{info_path}: says {info['num_samples']} samples, the indexes hold {len(self.keys)}")
        self.key_to_index = {k: i for i, k in enumerate(self.keys)}
        self._files: dict[int, object] = {}
        self._pid = os.getpid()
        self.labels = np.stack([self._read_labels(i) for i in range(len(self))]) if len(self) else np.zeros((0, 14))

    @staticmethod
    def _check_manifest(tar: Path, record: dict, info_path: Path) -> None:
        """The shard's .idx is the one written with its tar (sha256) and the tar has its written size."""
        if not tar.is_file():
            raise DataError(f"{tar}: shard missing")
        idx = tar.with_suffix(".idx")
        want = record.get("idx_sha256")
        if want and idx.is_file() and hashlib.sha256(idx.read_bytes()).hexdigest() != want:
            raise DataError(
                f"{idx}: checksum differs from {info_path} (not the index written for {tar.name}); "
                "rewrite the shards or restore the file (launch/verify_shards.py checks a whole shard set)"
            )
        if "bytes" in record and tar.stat().st_size != record["bytes"]:
            raise DataError(
                f"{tar}: truncated or replaced ({tar.stat().st_size} bytes, {info_path} says {record['bytes']})"
            )

    def _index_shard(self, i: int, tar: Path) -> None:
        if not tar.is_file():
            raise DataError(f"{tar}: shard missing")
        for e in read_index(tar.with_suffix(".idx"), tar_size=tar.stat().st_size):
            missing = [c for c in COMPONENTS if c not in e.members]
            if missing:
                raise DataError(f"{tar}: sample {e.key} lacks component(s) {missing}")
            self.refs.append(SampleRef(i, e.members["jpg"], e.members["cls"], e.members["json"]))
            self.keys.append(e.key)

    def __len__(self) -> int:
        return len(self.refs)

    def _read(self, shard: int, span: tuple[int, int]) -> bytes:
        if os.getpid() != self._pid:  # a forked DataLoader worker must not share file offsets with its parent
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(shard)
        if f is None:
            f = self._files[shard] = open(self.tars[shard], "rb")  # noqa: SIM115 (kept open for reuse)
        f.seek(span[0])
        data = f.read(span[1])
        if len(data) != span[1]:
            raise DataError(f"{self.tars[shard]}: truncated (wanted {span[1]} bytes at {span[0]})")
        return data

    def _read_labels(self, index: int) -> np.ndarray:
        ref = self.refs[index]
        return decode_labels(self._read(ref.shard, ref.cls), where=f"{self.tars[ref.shard]}: {self.keys[index]}")

    def jpeg(self, index: int) -> bytes:
        """The encoded JPEG of sample ``index``."""
        ref = self.refs[index]
        return self._read(ref.shard, ref.jpg)

    def meta(self, index: int) -> dict:
        """The sample's JSON metadata (boxes in stored pixels, patient id, sizes...)."""
        ref = self.refs[index]
        return json.loads(self._read(ref.shard, ref.json))

    def where(self, index: int) -> str:
        """'shard path: key' of a sample, for error messages."""
        return f"{self.tars[self.refs[index].shard]}: {self.keys[index]}"

    def indices_of(self, keys: list[str], source: str = "key list") -> np.ndarray:
        """Global indices of ``keys``; an unknown key is an error naming it."""
        missing = [k for k in keys if k not in self.key_to_index]
        if missing:
            raise DataError(f"{source}: {len(missing)} key(s) not in split {self.split!r}, e.g. {missing[:3]}")
        return np.array([self.key_to_index[k] for k in keys], dtype=np.int64)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"] = {}
        return state
