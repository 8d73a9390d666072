"""NIH root → WebDataset shards per split (train, val, test, bbox), resumable, parallel, a range at a time.

The unit of work is one shard; :func:`write_shards` takes a range of shard numbers so a Slurm array task can
write its part. A shard is complete when its ``shard-NNNNNN.json`` record exists and the tar's sha256 matches
it; anything else is rewritten (temp name, then rename). :func:`finalize` writes the manifests once every
shard is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing as mp
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrdist.data import external
from cxrdist.data.external import common as external_common
from cxrdist.data.external.labelmap import label_map_record
from cxrdist.data.external.padchest import MIN_AGE
from cxrdist.data.format import (
    FORMAT_VERSION,
    DataError,
    TarShardWriter,
    atomic_write_bytes,
    atomic_write_json,
    encode_labels,
    read_json,
    shard_name,
)
from cxrdist.data.images import Refused, gray_from_pil, jpeg_bytes, resize_gray
from cxrdist.data.nih import BBOX_LIST, DATA_ENTRY, SPLITS, Record, find_file, plan_splits, sha256_file
from cxrdist.labels import LABELS, NUM_LABELS
from cxrdist.progress import Progress

logger = logging.getLogger(__name__)
FILTERED = "filtered.jsonl"  # external sets: rows left out by the options (view filter, blank/excluded labels)


@dataclass(frozen=True)
class WriterConfig:
    """Everything that determines the shards' content (``workers`` and ``skip_bad`` do not change good shards)."""

    nih_root: str
    out: str
    size: int = 512
    quality: int = 95
    val_fraction: float = 0.125
    seed: int = 0
    samples_per_shard: int = 1000
    split_scheme: str = "official"
    test_fraction: float = 0.3
    skip_bad: bool = False
    workers: int = 1
    # External sets (data/external): nih_root is then that dataset's root. Left out of an NIH config's content
    # so NIH shard hashes stay what they were.
    dataset: str = "nih"
    views: str = "frontal"
    uncertain: str = "ignore"
    window16: str = "max"
    min_age: int = MIN_AGE  # PadChest only (left out of the other datasets' content): 0 keeps pediatric images

    def content_dict(self) -> dict[str, Any]:
        """The fields that change what is written (paths, workers and skip policy excluded)."""
        skip = {"nih_root", "out", "workers", "skip_bad"}
        if self.dataset == "nih":
            skip |= {"dataset", "views", "uncertain", "window16"}
        if self.dataset != "padchest":
            skip.add("min_age")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def external_plan(self) -> external_common.ExternalPlan:
        """An external dataset's records, filtered by this config's options (``data/external``)."""
        age = {"min_age": self.min_age} if self.dataset == "padchest" else {}
        return external.plan(self.dataset, Path(self.nih_root), views=self.views, uncertain=self.uncertain, **age)


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its split, number and records."""

    split: str
    index: int
    records: tuple[Record, ...]


def load_gray(path: Path) -> np.ndarray:
    """Decode a PNG to 8-bit grayscale (rules: ``images.gray_from_pil``); error naming the file if it is missing
    or not decodable as grayscale."""
    if not path.is_file():
        raise DataError(f"{path}: image file missing")
    try:
        with Image.open(path) as im:
            im.load()
            return gray_from_pil(im)
    except Refused as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"{path}: corrupt or undecodable image: {type(e).__name__}: {e}") from None


def encode_jpeg(gray: np.ndarray, size: int, quality: int) -> bytes:
    """Resize a grayscale image to size×size (0 keeps it) and encode it as JPEG (the steps predict reuses)."""
    return jpeg_bytes(resize_gray(gray, size), quality)


def build_sample(rec: Record, root: Path, cfg: WriterConfig) -> dict[str, bytes]:
    """Read, resize and encode one image; return its tar members."""
    if cfg.dataset != "nih":
        return external_common.build_sample(rec, root, cfg.size, cfg.quality, cfg.dataset, cfg.window16)
    gray = load_gray(root / "images" / rec.image)
    src_h, src_w = gray.shape
    jpg = encode_jpeg(gray, cfg.size, cfg.quality)
    out_w, out_h = (cfg.size, cfg.size) if cfg.size else (src_w, src_h)
    sx, sy = out_w / src_w, out_h / src_h
    meta = {
        "key": rec.key,
        "image": rec.image,
        "patient_id": rec.patient_id,
        "age": rec.age,
        "sex": rec.sex,
        "view": rec.view,
        "follow_up": rec.follow_up,
        "original_size": list(rec.original_size),
        "source_size": [src_w, src_h],
        "size": [out_w, out_h],
        "labels": [LABELS[i] for i in np.flatnonzero(rec.labels)],
        "boxes": [
            {"label": b.label, "class": b.class_index, "x": s.x, "y": s.y, "w": s.w, "h": s.h}
            for b in rec.boxes
            for s in [b.scaled(sx, sy)]
        ],
    }
    return {"jpg": jpg, "cls": encode_labels(rec.labels), "json": json.dumps(meta, sort_keys=True).encode()}


def _shard_paths(out: Path, split: str, index: int) -> tuple[Path, Path, Path]:
    base = out / split / shard_name(index)
    return base.with_suffix(".tar"), base.with_suffix(".idx"), base.with_suffix(".json")


def shard_is_complete(out: Path, split: str, index: int, expected_keys: int | None = None) -> bool:
    """True when the shard's record exists and its tar and index checksums verify."""
    tar, idx, rec = _shard_paths(out, split, index)
    if not (tar.is_file() and idx.is_file() and rec.is_file()):
        return False
    try:
        info = read_json(rec)
    except ValueError:
        return False
    if expected_keys is not None and info.get("planned") != expected_keys:
        return False
    return sha256_file(tar) == info.get("sha256") and sha256_file(idx) == info.get("idx_sha256")


def write_one_shard(task: ShardTask, cfg: WriterConfig) -> dict[str, Any]:
    """Write one shard (tar, idx, record) unless it is already complete; return its record."""
    out, root = Path(cfg.out), Path(cfg.nih_root)
    tar_path, idx_path, rec_path = _shard_paths(out, task.split, task.index)
    if shard_is_complete(out, task.split, task.index, len(task.records)):
        return {**read_json(rec_path), "reused": True}
    for stale in tar_path.parent.glob(f".{tar_path.stem}.*.tmp*"):  # left by a killed writer of this shard
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    buf = io.BytesIO()
    writer = TarShardWriter(buf)
    labels = np.zeros(NUM_LABELS, dtype=np.int64)
    boxes = np.zeros(NUM_LABELS, dtype=np.int64)
    skipped = []
    for rec in task.records:
        try:
            members = build_sample(rec, root, cfg)
        except DataError as e:
            if not cfg.skip_bad:
                raise
            skipped.append({"key": rec.key, "split": task.split, "reason": str(e)})
            continue
        writer.add_sample(rec.key, members)
        labels += rec.labels
        for b in rec.boxes:
            boxes[b.class_index] += 1
    idx_text = writer.close().encode()
    data = buf.getvalue()
    atomic_write_bytes(tar_path, data)
    atomic_write_bytes(idx_path, idx_text)
    record = {
        "shard": tar_path.name,
        "planned": len(task.records),
        "samples": len(writer.index_lines),
        "sha256": hashlib.sha256(data).hexdigest(),
        "idx_sha256": hashlib.sha256(idx_text).hexdigest(),
        "bytes": len(data),
        "label_counts": labels.tolist(),
        "box_counts": boxes.tolist(),
        "skipped": skipped,
    }
    atomic_write_json(rec_path, record)
    return {**record, "reused": False, "seconds": time.perf_counter() - t0}


def plan_tasks(cfg: WriterConfig) -> list[ShardTask]:
    """All shards of all splits, in a fixed order (split order, then shard number)."""
    if cfg.dataset != "nih":
        splits = cfg.external_plan().splits
    else:
        splits = plan_splits(
            Path(cfg.nih_root),
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
            scheme=cfg.split_scheme,
            test_fraction=cfg.test_fraction,
        ).splits
    if cfg.samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be ≥ 1, got {cfg.samples_per_shard}")
    tasks = []
    for split in SPLITS:
        recs = splits.get(split, [])
        for i, start in enumerate(range(0, len(recs), cfg.samples_per_shard)):
            tasks.append(ShardTask(split, i, tuple(recs[start : start + cfg.samples_per_shard])))
    return tasks


def dataset_header(cfg: WriterConfig) -> dict[str, Any]:
    """The ``_dataset.json`` content: writer config, its hash and the source CSVs' hashes."""
    root = Path(cfg.nih_root)
    extra: dict[str, Any] = {}
    if cfg.dataset != "nih":
        plan = cfg.external_plan()
        sources = {p.name: sha256_file(p) for p in plan.sources}
        reasons = Counter(f["reason"] for f in plan.filtered)
        filtered = {"count": len(plan.filtered), "by_reason": dict(sorted(reasons.items())), "list": FILTERED}
        extra = {"dataset": cfg.dataset, "label_map": label_map_record(cfg.dataset), "filtered": filtered}
    else:
        sources = {name: sha256_file(find_file(root, name)) for name in (DATA_ENTRY, BBOX_LIST)}
    content = {"format_version": FORMAT_VERSION, "config": cfg.content_dict(), "sources": sources}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    return {**content, "config_hash": digest, "labels": list(LABELS), **extra}


def prepare_output(cfg: WriterConfig) -> dict[str, Any]:
    """Create the output dir and its ``_dataset.json``, or refuse one that holds shards of another config."""
    out = Path(cfg.out)
    header = dataset_header(cfg)
    path = out / "_dataset.json"
    if path.is_file():
        old = read_json(path)
        if old.get("config_hash") != header["config_hash"]:
            diff = {
                k: (old.get("config", {}).get(k), v)
                for k, v in header["config"].items()
                if old.get("config", {}).get(k) != v
            }
            if old.get("sources") != header["sources"]:
                diff["sources"] = "source CSVs differ"
            raise DataError(f"{out} holds shards from a different writer config: (old, new) = {diff}; use a new --out")
        return old
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (out / split).mkdir(exist_ok=True)
    if cfg.dataset != "nih":  # the rows the view filter and the release's own exclusions leave out, one a line
        plan = cfg.external_plan()
        lines = "".join(json.dumps(f, sort_keys=True) + "\n" for f in plan.filtered)
        atomic_write_bytes(out / FILTERED, lines.encode())
    atomic_write_json(path, header)
    return header


def _write_task(args: tuple[ShardTask, WriterConfig]) -> dict[str, Any]:
    return write_one_shard(*args)


def write_shards(cfg: WriterConfig, start: int = 0, stop: int | None = None, progress: bool = True) -> list[dict]:
    """Write shards ``start..stop`` of the task list (all by default) with ``cfg.workers`` processes.

    ``progress``: a bar on a terminal, else a log line every 30 s. The task list is read (and the CSVs checked)
    before the output folder is created.
    """
    tasks = plan_tasks(cfg)[start:stop]
    prepare_output(cfg)
    bar = Progress(sum(len(t.records) for t in tasks), "shards", enabled=progress)
    results = []
    work = [(t, cfg) for t in tasks]
    if cfg.workers <= 1:
        iterator = map(_write_task, work)
        for r in iterator:
            results.append(r)
            bar.update(r["planned"])
    else:
        # spawn: a forked child would inherit the parent's threads (torch, DALI) and can deadlock.
        with mp.get_context("spawn").Pool(cfg.workers) as pool:
            for r in pool.imap_unordered(_write_task, work):
                results.append(r)
                bar.update(r["planned"])
    bar.close()
    return results


def finalize(cfg: WriterConfig) -> dict[str, Any]:
    """Check every shard is complete, then write each split's ``_info.json`` and ``skipped.jsonl``."""
    out = Path(cfg.out)
    header = prepare_output(cfg)
    tasks = plan_tasks(cfg)
    incomplete = [f"{t.split}/{shard_name(t.index)}" for t in tasks if not shard_is_complete(out, t.split, t.index)]
    if incomplete:
        raise DataError(f"{out}: {len(incomplete)} shard(s) incomplete, e.g. {incomplete[:3]}; rerun the writer")
    summary, skipped_all = {}, []
    for split in SPLITS:
        recs = [read_json(_shard_paths(out, split, t.index)[2]) for t in tasks if t.split == split]
        skipped = [s for r in recs for s in r["skipped"]]
        skipped_all += skipped
        info = {
            "split": split,
            "num_samples": sum(r["samples"] for r in recs),
            "num_skipped": len(skipped),
            "shards": [{k: r[k] for k in ("shard", "samples", "sha256", "idx_sha256", "bytes")} for r in recs],
            "label_counts": dict(zip(LABELS, np.sum([r["label_counts"] for r in recs] or [[0] * 14], 0).tolist())),
            "box_counts": dict(zip(LABELS[:8], np.sum([r["box_counts"] for r in recs] or [[0] * 14], 0)[:8].tolist())),
            "config_hash": header["config_hash"],
            "writer": header["config"],
            "sources": header["sources"],
        }
        atomic_write_json(out / split / "_info.json", info)
        summary[split] = info
    lines = "".join(json.dumps(s, sort_keys=True) + "\n" for s in skipped_all)
    atomic_write_bytes(out / "skipped.jsonl", lines.encode())
    if skipped_all:
        logger.warning("%d sample(s) skipped; see %s", len(skipped_all), out / "skipped.jsonl")
    return summary


def write_dataset(cfg: WriterConfig, progress: bool = True) -> dict[str, Any]:
    """Write every shard and the manifests; return the per-split summary."""
    write_shards(cfg, progress=progress)
    return finalize(cfg)


def config_from_dict(d: dict[str, Any]) -> WriterConfig:
    """Build a WriterConfig from a plain dict (e.g. parsed CLI args), ignoring unknown keys."""
    names = {f.name for f in fields(WriterConfig)}
    return WriterConfig(**{k: v for k, v in d.items() if k in names})
