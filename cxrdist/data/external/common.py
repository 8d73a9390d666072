"""What the three external adapters share: the record, CSV reading with named errors, the image rule, the sample.

A sample of an external shard root has the NIH format's three members; its ``.json`` adds ``dataset``,
``label_mask`` (14 × 0/1: 1 where this image's label is known, 0 for a class the dataset does not annotate or an
uncertain label under ``--uncertain ignore``) and ``source_labels`` (the dataset's own labels, extras included).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrdist.data.format import DataError
from cxrdist.data.images import Refused, gray_from_pil, jpeg_bytes, resize_gray
from cxrdist.labels import LABELS, NUM_LABELS

VIEW_FILTERS = ("frontal", "all")
# 16-bit grey PNGs (PadChest) → 8 bits. "max": v / max(v) · 255, the rule of the NIH writer and of predict
# (images.gray_from_pil), the default. "percentile": linear from the image's 0.5th to 99.5th percentile, a display
# window that ignores a few saturated pixels. On the phantoms a chexnet trained on the NIH phantom scores PadChest at
# 0.713 mean AUROC with "max" and 0.621 with "percentile" (README, External validation): the stretch is a shift.
WINDOWS_16BIT = ("max", "percentile")
WINDOW_PERCENTILES = (0.5, 99.5)


@dataclass
class ExternalRecord:
    """One image of an external dataset, ready for the shard writer."""

    key: str
    image: str  # path relative to the dataset root
    labels: np.ndarray  # (14,) uint8 0/1 in LABELS order
    mask: np.ndarray  # (14,) uint8: 1 where the label is known
    patient_id: str
    view: str
    study: str
    age: int | None = None
    sex: str = ""
    source_labels: dict[str, Any] = field(default_factory=dict)
    boxes: tuple = ()  # external sets have no boxes; the writer counts them


@dataclass
class ExternalPlan:
    """An adapter's reading of a release: records per split, filtered rows and the source files it read."""

    splits: dict[str, list[ExternalRecord]]
    filtered: list[dict[str, str]]  # {"row": where, "reason": why}: rows the options leave out, counted
    sources: list[Path]


def find_source(root: Path, *names: str) -> Path:
    """The first of ``names`` (each also as ``.gz``) under ``root``; one-line error naming them if none exists."""
    for name in names:
        for cand in (root / name, root / f"{name}.gz"):
            if cand.is_file():
                return cand
    raise DataError(f"{root}: missing {' or '.join(names)} (nor .gz); is this the dataset's unpacked release?")


def read_csv(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line, row) of a CSV (plain or .gz) after checking that its header has the ``required`` columns."""
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115 (closed by the with)
    with io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} in the header")
        for row in reader:
            if None in row:
                raise DataError(f"{path}: line {reader.line_num}: more fields than the header's {len(row) - 1}")
            yield reader.line_num, row


def labeler_value(text: str, where: str, column: str) -> float | None:
    """A CheXpert-labeler cell: '1', '1.0', '0', '-1' (any float spelling) or blank → 1, 0, -1 or None."""
    t = text.strip()
    if not t:
        return None
    try:
        v = float(t)
    except ValueError:
        v = float("nan")
    if v not in (1.0, 0.0, -1.0):
        raise DataError(f"{where}: column {column!r}: value {text!r}; expected 1, 0, -1 or blank")
    return v


def check_views(views: str) -> None:
    """The view filter is one of VIEW_FILTERS."""
    if views not in VIEW_FILTERS:
        raise DataError(f"views {views!r}: choose {' or '.join(VIEW_FILTERS)}")


def load_gray(path: Path, window: str = "max") -> np.ndarray:
    """An external image as 8-bit grey by the writer's rule; a 16-bit grey one by ``window`` (WINDOWS_16BIT)."""
    if not path.is_file():
        raise DataError(f"{path}: image file missing")
    try:
        with Image.open(path) as im:
            im.load()
            if window == "percentile" and im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return window16(np.asarray(im))
            return gray_from_pil(im)
    except Refused as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise DataError(f"{path}: corrupt or undecodable image: {type(e).__name__}: {e}") from None


def window16(raw: np.ndarray) -> np.ndarray:
    """A 16-bit grey image → uint8, linear between its WINDOW_PERCENTILES (flat images → 0)."""
    a = raw.astype(np.float64)
    lo, hi = np.percentile(a, WINDOW_PERCENTILES)
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.rint(np.clip((a - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def build_sample(
    rec: ExternalRecord, root: Path, size: int, quality: int, dataset: str, window: str = "max"
) -> dict[str, bytes]:
    """Read, resize and encode one external image; return its tar members (the NIH format plus the mask)."""
    gray = load_gray(root / rec.image, window)
    src_h, src_w = gray.shape
    jpg = jpeg_bytes(resize_gray(gray, size), quality)
    out_w, out_h = (size, size) if size else (src_w, src_h)
    meta = {
        "key": rec.key,
        "image": rec.image,
        "dataset": dataset,
        "patient_id": rec.patient_id,
        "study": rec.study,
        "age": rec.age,
        "sex": rec.sex,
        "view": rec.view,
        "source_size": [src_w, src_h],
        "size": [out_w, out_h],
        "labels": [LABELS[i] for i in np.flatnonzero(rec.labels)],
        "label_mask": [int(v) for v in rec.mask],
        "source_labels": rec.source_labels,
        "boxes": [],
    }
    cls = np.asarray(rec.labels, dtype=np.uint8)
    if cls.shape != (NUM_LABELS,):
        raise ValueError(f"{rec.key}: labels must have {NUM_LABELS} entries")
    return {"jpg": jpg, "cls": cls.tobytes(), "json": json.dumps(meta, sort_keys=True).encode()}


def label_masks(reader: Any) -> tuple[np.ndarray, list[str]] | None:
    """(N, 14) uint8 label masks and the patient ids of a split read by a ShardReader, or None for an NIH split
    (every label known)."""
    if len(reader) == 0 or "label_mask" not in reader.meta(0):
        return None
    metas = [reader.meta(i) for i in range(len(reader))]
    return np.array([m["label_mask"] for m in metas], dtype=np.uint8), [str(m["patient_id"]) for m in metas]
