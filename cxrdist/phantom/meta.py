"""The real NIH metadata for the phantom: reading the four release files and choosing whole patients.

``load_metadata`` keeps the rows as raw lines so the phantom writes the chosen ones back verbatim;
``select_images`` picks whole real patients (box owners first) so every image keeps its official split.
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from cxrdist.data.nih import BBOX_LIST, DATA_ENTRY, TEST_LIST, TRAIN_VAL_LIST
from cxrdist.labels import BOX_CLASSES, normalize_label

ENV_METADATA = "CXRDIST_NIH_METADATA"
PACKAGED_METADATA = "nih_metadata"  # folder of cxrdist.phantom holding the unmodified NIH files (gzipped)
_BOX_SHARE = 0.15  # share of the images first spent on patients that own box images


@dataclass
class Metadata:
    """The real NIH metadata, kept as raw lines so chosen rows are written back verbatim."""

    header: str
    rows: dict[str, str]  # image -> Data_Entry line, in file order
    patient: dict[str, str]  # image -> patient ID
    bbox_header: str
    boxes: dict[str, list[list[str]]]  # image -> box rows as fields [image, label, x, y, w, h]
    train_val: list[str]
    test: list[str]


def packaged_metadata_dir() -> Path:
    """The NIH metadata shipped inside the package (``cxrdist/phantom/nih_metadata``, see its PROVENANCE.md).

    Raises:
        FileNotFoundError: the install lacks the files (a build that dropped the package data).
    """
    folder = resources.files("cxrdist.phantom").joinpath(PACKAGED_METADATA)
    # cxrdist is installed as plain files (never zipped), so the resource is a real directory.
    if not isinstance(folder, Path) or not (folder / f"{DATA_ENTRY}.gz").is_file():
        raise FileNotFoundError(
            f"the NIH metadata package data is missing ({folder}); reinstall cxrdist, or set {ENV_METADATA} to a "
            "folder with the four NIH files"
        )
    return folder


def default_metadata_dir() -> Path:
    """The NIH metadata folder: ``$CXRDIST_NIH_METADATA`` if set, else the package's own copy.

    Raises:
        FileNotFoundError: the variable names no directory, or the package data is missing.
    """
    env = os.environ.get(ENV_METADATA)
    if env:
        if not Path(env).is_dir():
            raise FileNotFoundError(f"{ENV_METADATA}={env!r} is not a directory; unset it to use the packaged copy")
        return Path(env)
    return packaged_metadata_dir()


def _read_lines(folder: Path, name: str) -> list[str]:
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8", newline="") as fh:
                return [line.rstrip("\r\n") for line in fh if line.strip()]
    raise FileNotFoundError(f"{folder}: missing {name} (nor {name}.gz)")


def load_metadata(folder: Path) -> Metadata:
    """Read the four NIH metadata files (plain or ``.gz``) from ``folder``."""
    folder = Path(folder)
    entry, bbox = _read_lines(folder, DATA_ENTRY), _read_lines(folder, BBOX_LIST)
    rows, patient = {}, {}
    for i, line in enumerate(entry[1:], start=2):
        fields = line.split(",")
        if len(fields) != 11:
            raise ValueError(f"{folder / DATA_ENTRY}: line {i}: expected 11 fields, got {len(fields)}")
        rows[fields[0]], patient[fields[0]] = line, fields[3]
    boxes: dict[str, list[list[str]]] = {}
    for i, line in enumerate(bbox[1:], start=2):
        fields = line.split(",")
        if len(fields) != 6 or fields[0] not in rows:
            raise ValueError(f"{folder / BBOX_LIST}: line {i}: malformed or unknown image: {line!r}")
        normalize_label(fields[1], source=str(folder / BBOX_LIST), row=i)
        boxes.setdefault(fields[0], []).append(fields)
    tv, te = _read_lines(folder, TRAIN_VAL_LIST), _read_lines(folder, TEST_LIST)
    return Metadata(entry[0], rows, patient, bbox[0], boxes, [s.strip() for s in tv], [s.strip() for s in te])


def load_metadata_cached(folder: Path) -> Metadata:
    """:func:`load_metadata`, reused within a process while the folder's files are unchanged (their mtimes)."""
    folder = Path(folder).resolve()
    return _load_cached(str(folder), tuple(p.stat().st_mtime_ns for p in sorted(folder.iterdir())))


@functools.lru_cache(maxsize=2)
def _load_cached(folder: str, stamp: tuple[int, ...]) -> Metadata:
    """Parsing 112k rows takes ~1 s; ``stamp`` only keys the cache."""
    return load_metadata(Path(folder))


def _take(order: list[str], images: dict[str, list[str]], chosen: dict[str, None], budget: int) -> int:
    """Add whole patients from ``order`` that still fit in ``budget`` images; return the images added."""
    added = 0
    for p in order:
        if added == budget:
            break
        if p not in chosen and len(images[p]) <= budget - added:
            chosen[p] = None
            added += len(images[p])
    return added


def select_images(meta: Metadata, num_images: int, seed: int) -> list[str]:
    """Choose whole patients totalling exactly ``num_images`` images (capped at the release), in file order.

    First patients owning box images, round-robin over the 8 box classes and smallest patients first, up to ~15% of
    the images; then random patients from test and train_val in the release's proportion.
    """
    rng = np.random.default_rng([seed, 0x9A7])
    listed = set(meta.train_val) | set(meta.test)
    images: dict[str, list[str]] = {}
    for name in meta.rows:
        if name in listed:  # an image in neither official list could keep no split
            images.setdefault(meta.patient[name], []).append(name)
    patients = list(images)
    tiebreak = dict(zip(patients, rng.permutation(len(patients)).tolist()))
    n = min(num_images, sum(map(len, images.values())))
    chosen: dict[str, None] = {}  # an ordered set
    count, budget = 0, min(n, max(round(_BOX_SHARE * n), 16))
    owners: dict[str, set[str]] = {c: set() for c in BOX_CLASSES}
    for name, rows in meta.boxes.items():
        for c in {normalize_label(r[1]) for r in rows} if meta.patient[name] in images else ():
            owners[c].add(meta.patient[name])
    queues = {c: sorted(ps, key=lambda p: (len(images[p]), tiebreak[p])) for c, ps in owners.items()}
    progress = True
    while progress:  # one patient per class per round while the next smallest one fits
        progress = False
        for c in BOX_CLASSES:
            nxt = next((p for p in queues[c] if p not in chosen), None)
            if nxt is not None and count + len(images[nxt]) <= budget:
                chosen[nxt] = None
                count, progress = count + len(images[nxt]), True
    test = set(meta.test)
    is_test = {p: imgs[0] in test for p, imgs in images.items()}
    test_now = sum(len(images[p]) for p in chosen if is_test[p])
    want_test = max(0, min(n - count, round(n * len(meta.test) / len(listed)) - test_now))
    order = [patients[i] for i in rng.permutation(len(patients))]
    count += _take([p for p in order if is_test[p]], images, chosen, want_test)
    count += _take([p for p in order if not is_test[p]], images, chosen, n - count)
    count += _take(order, images, chosen, n - count)  # only if one split ran out
    picked = {i for p in chosen for i in images[p]}
    return [name for name in meta.rows if name in picked]
