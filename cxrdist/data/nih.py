"""Reading an NIH ChestX-ray14 root (the real release or the phantom) and planning the splits.

An NIH root holds ``images/*.png``, ``Data_Entry_2017_v2020.csv``, ``BBox_List_2017.csv``,
``train_val_list.txt`` and ``test_list.txt`` (the real release's names; ``.gz`` variants are read too).
Every problem is a :class:`DataError` naming the file and row.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrdist.data.format import DataError
from cxrdist.labels import BOX_CLASSES, LABEL_INDEX, LabelError, normalize_label, parse_finding_labels

DATA_ENTRY = "Data_Entry_2017_v2020.csv"
BBOX_LIST = "BBox_List_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
SPLITS = ("train", "val", "test", "bbox")
SPLIT_SCHEMES = ("official", "random-image")


@dataclass(frozen=True)
class Box:
    """A ground-truth box in the pixels of the image it refers to."""

    label: str
    x: float
    y: float
    w: float
    h: float

    @property
    def class_index(self) -> int:
        """Index of the box's class in LABELS (always < 8)."""
        return LABEL_INDEX[self.label]

    def scaled(self, sx: float, sy: float) -> Box:
        """The same box in an image resized by (sx, sy)."""
        return Box(self.label, self.x * sx, self.y * sy, self.w * sx, self.h * sy)


@dataclass
class Record:
    """One image's metadata row."""

    image: str
    labels: np.ndarray
    follow_up: int
    patient_id: int
    age: int
    sex: str
    view: str
    original_size: tuple[int, int]
    boxes: list[Box] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Sample key: the file name without ``.png`` (no dots, as webdataset and DALI require)."""
        return Path(self.image).stem


def find_file(root: Path, name: str) -> Path:
    """Return ``root/name`` or ``root/name.gz``; error naming both if neither exists."""
    for cand in (root / name, root / f"{name}.gz"):
        if cand.is_file():
            return cand
    raise DataError(f"{root}: missing {name} (nor {name}.gz); is this an NIH ChestX-ray14 root?")


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def sha256_file(path: Path) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _rows(path: Path, num_fields: int) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) of a CSV after its header, checking the field count."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != num_fields:
                raise DataError(f"{path}: line {line}: expected {num_fields} fields, got {len(row)}: {row!r}")
            yield line, row


def read_data_entry(path: Path) -> dict[str, Record]:
    """Parse ``Data_Entry_2017_v2020.csv`` into records keyed by image name."""
    records: dict[str, Record] = {}
    first_line: dict[str, int] = {}
    for line, row in _rows(path, 11):
        image = row[0].strip()
        try:
            labels = parse_finding_labels(row[1], source=str(path), row=line)
        except LabelError as e:
            raise DataError(str(e)) from None
        try:
            rec = Record(
                image=image,
                labels=labels,
                follow_up=int(row[2]),
                patient_id=int(row[3]),
                age=int(row[4]),
                sex=row[5].strip(),
                view=row[6].strip(),
                original_size=(int(row[7]), int(row[8])),
            )
        except ValueError as e:
            raise DataError(f"{path}: line {line}: malformed row {row!r}: {e}") from None
        if not image.endswith(".png") or "." in Path(image).stem:
            raise DataError(f"{path}: line {line}: image name {image!r} is not <name>.png without other dots")
        if image in records:
            raise DataError(f"{path}: line {line}: duplicate image index {image!r} (first at line {first_line[image]})")
        records[image] = rec
        first_line[image] = line
    if not records:
        raise DataError(f"{path}: no rows")
    return records


def read_boxes(path: Path, records: dict[str, Record]) -> int:
    """Attach the rows of ``BBox_List_2017.csv`` to their records; return the number of boxes."""
    count = 0
    for line, row in _rows(path, 6):
        image = row[0].strip()
        try:
            label = normalize_label(row[1], source=str(path), row=line)
        except LabelError as e:
            raise DataError(str(e)) from None
        if label not in BOX_CLASSES:
            raise DataError(f"{path}: line {line}: {label!r} is not one of the 8 box classes")
        if image not in records:
            raise DataError(f"{path}: line {line}: box on {image!r}, which is not in {DATA_ENTRY}")
        try:
            x, y, w, h = (float(v) for v in row[2:6])
        except ValueError:
            raise DataError(f"{path}: line {line}: malformed box {row[2:6]!r}") from None
        if w <= 0 or h <= 0:
            raise DataError(f"{path}: line {line}: box with non-positive size {row[2:6]!r}")
        records[image].boxes.append(Box(label, x, y, w, h))
        count += 1
    return count


def read_list(path: Path) -> list[str]:
    """Read a split list (one image name per line); a duplicate line is an error."""
    seen: set[str] = set()
    out: list[str] = []
    with _open_text(path) as f:
        for i, line in enumerate(f, 1):
            name = line.strip()
            if not name:
                continue
            if name in seen:
                raise DataError(f"{path}: line {i}: {name!r} listed twice")
            seen.add(name)
            out.append(name)
    return out


@dataclass
class SplitPlan:
    """Which records go into which split, in the order they are written."""

    splits: dict[str, list[Record]]
    scheme: str
    num_boxes: int
    notes: list[str]

    def counts(self) -> dict[str, int]:
        """Number of images per split."""
        return {k: len(v) for k, v in self.splits.items()}


def _patient_val_split(records: list[Record], val_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Split train_val by patient: a seeded random ``val_fraction`` of patients goes to val."""
    patients = sorted({r.patient_id for r in records})
    rng = random.Random(seed)
    rng.shuffle(patients)
    num_val = round(len(patients) * val_fraction)
    val_patients = set(patients[:num_val])
    train = [r for r in records if r.patient_id not in val_patients]
    val = [r for r in records if r.patient_id in val_patients]
    return train, val


def _check_patient_disjoint(splits: dict[str, list[Record]]) -> None:
    owner: dict[int, str] = {}
    for name in ("train", "val", "test"):
        for r in splits[name]:
            other = owner.setdefault(r.patient_id, name)
            if other != name:
                raise DataError(
                    f"patient {r.patient_id} is in both {other} and {name} (image {r.image}); "
                    "the official lists are patient-disjoint, so the lists or Data_Entry are inconsistent"
                )


def _official_lists(root: Path, records: dict[str, Record]) -> tuple[list[Record], list[Record]]:
    tv_path, te_path = find_file(root, TRAIN_VAL_LIST), find_file(root, TEST_LIST)
    train_val, test = read_list(tv_path), read_list(te_path)
    where: dict[str, str] = {}
    for path, names in ((tv_path, train_val), (te_path, test)):
        for n in names:
            if n in where:
                raise DataError(f"{n!r} is in both {where[n]} and {path}")
            if n not in records:
                raise DataError(f"{path}: {n!r} is not in {DATA_ENTRY}")
            where[n] = str(path)
    missing = [n for n in records if n not in where]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of {DATA_ENTRY} are in no split list, e.g. {missing[:3]} "
            f"(neither {tv_path.name} nor {te_path.name})"
        )
    for n in train_val:
        if records[n].boxes:
            raise DataError(f"{find_file(root, BBOX_LIST)}: box on {n!r}, which is not in the test list {te_path}")
    return [records[n] for n in train_val], [records[n] for n in test]


def plan_splits(
    root: Path, *, val_fraction: float = 0.125, seed: int = 0, scheme: str = "official", test_fraction: float = 0.3
) -> SplitPlan:
    """Read an NIH root and assign every image to train/val/test, plus bbox = test images with boxes.

    Args:
        root: the NIH-layout folder.
        val_fraction: fraction of train_val *patients* that form val (no paper publishes its val split; 1/8 is
            the conventional choice noted in docs/methods.md#labels-and-splits).
        seed: seed of the val split (and of the random-image split).
        scheme: ``official`` (the release's lists; patient-disjoint, checked) or ``random-image`` (zhao2021's
            protocol: a random image-level train/test split of all images; patients may straddle it).
        test_fraction: test share of all images under ``random-image`` (zhao2021: 0.3).
    """
    if scheme not in SPLIT_SCHEMES:
        raise DataError(f"unknown split scheme {scheme!r}; choose one of {SPLIT_SCHEMES}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    records = read_data_entry(find_file(root, DATA_ENTRY))
    num_boxes = read_boxes(find_file(root, BBOX_LIST), records)
    notes: list[str] = []
    if scheme == "official":
        train_val, test = _official_lists(root, records)
    else:
        if not 0.0 < test_fraction < 1.0:
            raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
        names = sorted(records)
        random.Random(seed).shuffle(names)
        num_test = round(len(names) * test_fraction)
        test = [records[n] for n in sorted(names[:num_test])]
        train_val = [records[n] for n in sorted(names[num_test:])]
        dropped = sum(len(r.boxes) for r in train_val)
        notes.append(
            f"random-image split (zhao2021 protocol): {len(test)} test images ({test_fraction:.0%}); patients may be "
            f"in both train and test; {dropped} box(es) on images that fell into train are not evaluated"
        )
    train, val = _patient_val_split(train_val, val_fraction, seed)
    splits = {"train": train, "val": val, "test": test, "bbox": [r for r in test if r.boxes]}
    if scheme == "official":
        _check_patient_disjoint(splits)
        notes.append("train/val/test are patient-disjoint (checked)")
    for name in splits:
        splits[name].sort(key=lambda r: r.image)
    return SplitPlan(splits=splits, scheme=scheme, num_boxes=num_boxes, notes=notes)
