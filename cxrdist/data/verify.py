"""Re-read every shard: checksums, index ↔ tar agreement, counts, and a decode of every image."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cxrdist.data.format import COMPONENTS, DataError, decode_labels, read_index, read_json
from cxrdist.data.nih import SPLITS, sha256_file
from cxrdist.labels import BOX_CLASSES, LABELS, NUM_LABELS
from cxrdist.progress import Progress


@dataclass
class SplitReport:
    """What verification found for one split."""

    split: str
    samples: int = 0
    shards: int = 0
    label_counts: np.ndarray = field(default_factory=lambda: np.zeros(NUM_LABELS, dtype=np.int64))
    box_counts: np.ndarray = field(default_factory=lambda: np.zeros(NUM_LABELS, dtype=np.int64))
    images_with_boxes: int = 0
    keys: list[str] = field(default_factory=list)
    patients: set[int] = field(default_factory=set)


def _verify_members(tar_path: Path, idx_path: Path) -> dict[str, dict[str, bytes]]:
    """Read a tar's samples and check its index describes exactly those members at those offsets."""
    entries = read_index(idx_path, tar_size=tar_path.stat().st_size)
    samples: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        with tarfile.open(tar_path, "r:") as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                samples[key][ext] = tar.extractfile(m).read()
                i = len(order) - 1
                if i >= len(entries) or entries[i].key != key or entries[i].members.get(ext) != (m.offset_data, m.size):
                    raise DataError(f"{idx_path}: does not match {tar_path} at member {m.name}")
    except tarfile.TarError as e:
        raise DataError(f"{tar_path}: corrupt tar: {e}") from None
    if [e.key for e in entries] != order:
        raise DataError(f"{idx_path}: lists {len(entries)} samples, {tar_path} holds {len(order)}")
    return samples


def _check_sample(key: str, members: dict[str, bytes], where: str, rep: SplitReport) -> None:
    missing = [c for c in COMPONENTS if c not in members]
    if missing:
        raise DataError(f"{where}: sample {key} lacks component(s) {missing}")
    try:
        with Image.open(io.BytesIO(members["jpg"])) as im:
            im.load()
            if im.mode != "L":
                raise DataError(f"{where}: sample {key}: JPEG mode {im.mode}, expected L (grayscale)")
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{where}: sample {key}: undecodable JPEG: {e}") from None
    labels = decode_labels(members["cls"], where=f"{where}: {key}")
    meta = json.loads(members["json"])
    if meta["key"] != key:
        raise DataError(f"{where}: sample {key}: json names key {meta['key']!r}")
    if [LABELS[i] for i in np.flatnonzero(labels)] != meta["labels"]:
        raise DataError(f"{where}: sample {key}: .cls and .json labels disagree")
    mask = meta.get("label_mask")  # external sets: a positive label is always a known one
    if mask is not None and (len(mask) != NUM_LABELS or any(lab and not m for lab, m in zip(labels, mask))):
        raise DataError(f"{where}: sample {key}: label_mask {mask} does not cover the positive labels")
    rep.label_counts += labels
    for b in meta["boxes"]:
        rep.box_counts[b["class"]] += 1
    rep.images_with_boxes += bool(meta["boxes"])
    rep.patients.add(meta["patient_id"])
    rep.keys.append(key)


def verify_split(root: Path, split: str, progress: Progress | None = None) -> SplitReport:
    """Verify one split against its ``_info.json`` (``progress`` counts its samples)."""
    info_path = root / split / "_info.json"
    if not info_path.is_file():
        raise DataError(f"{info_path}: missing manifest; did the writer finish (finalize)?")
    info = read_json(info_path)
    rep = SplitReport(split)
    for sh in info["shards"]:
        tar_path = root / split / sh["shard"]
        idx_path = tar_path.with_suffix(".idx")
        for p, want in ((tar_path, sh["sha256"]), (idx_path, sh["idx_sha256"])):
            if not p.is_file():
                raise DataError(f"{p}: missing (listed in {info_path})")
            if sha256_file(p) != want:
                raise DataError(f"{p}: sha256 differs from {info_path}")
        samples = _verify_members(tar_path, idx_path)
        if len(samples) != sh["samples"]:
            raise DataError(f"{tar_path}: {len(samples)} samples, manifest says {sh['samples']}")
        for key, members in samples.items():
            _check_sample(key, members, str(tar_path), rep)
        rep.shards += 1
        if progress is not None:
            progress.update(len(samples))
    rep.samples = len(rep.keys)
    if rep.samples != info["num_samples"] or len(set(rep.keys)) != rep.samples:
        raise DataError(
            f"{root / split}: {rep.samples} samples ({len(set(rep.keys))} distinct), manifest says "
            f"{info['num_samples']}"
        )
    if rep.label_counts.tolist() != [info["label_counts"][n] for n in LABELS]:
        raise DataError(f"{root / split}: label counts differ from {info_path}")
    return rep


def verify_dataset(root: Path, progress: bool = False) -> dict[str, SplitReport]:
    """Verify all splits and their patient disjointness (official scheme); ``progress``: show a meter."""
    root = Path(root)
    header = read_json(root / "_dataset.json")
    total = 0
    for s in SPLITS:
        info = root / s / "_info.json"
        total += read_json(info)["num_samples"] if info.is_file() else 0
    with Progress(total, "verify", enabled=progress) as bar:
        reports = {s: verify_split(root, s, bar) for s in SPLITS}
    if header["config"].get("split_scheme", "official") == "official":
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = reports[a].patients & reports[b].patients
            if both:
                raise DataError(f"{root}: {len(both)} patient(s) in both {a} and {b}, e.g. {sorted(both)[:3]}")
    if not set(reports["bbox"].keys) <= set(reports["test"].keys):
        raise DataError(f"{root}: bbox split holds images that are not in test")
    return reports


def format_report(reports: dict[str, SplitReport]) -> str:
    """A readable per-split table: samples, shards, patients, positives per class, boxes per box class."""
    splits = list(reports)
    width = max(len(n) for n in LABELS) + 2
    lines = ["split".ljust(width) + "".join(s.rjust(9) for s in splits)]
    for row, get in (
        ("samples", lambda r: r.samples),
        ("shards", lambda r: r.shards),
        ("patients", lambda r: len(r.patients)),
    ):
        lines.append(row.ljust(width) + "".join(str(get(reports[s])).rjust(9) for s in splits))
    lines.append("positives per class:")
    for i, name in enumerate(LABELS):
        lines.append(f"  {name}".ljust(width) + "".join(str(reports[s].label_counts[i]).rjust(9) for s in splits))
    lines.append("boxes per class:")
    for i, name in enumerate(BOX_CLASSES):
        lines.append(f"  {name}".ljust(width) + "".join(str(reports[s].box_counts[i]).rjust(9) for s in splits))
    lines.append("images with boxes".ljust(width) + "".join(str(reports[s].images_with_boxes).rjust(9) for s in splits))
    return "\n".join(lines)
