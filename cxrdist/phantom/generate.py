"""The phantom ChestX-ray14: an NIH-layout folder with the real metadata rows and synthetic radiographs.

``make_phantom(out)`` picks whole real patients from the NIH metadata, keeps each image's official split, draws
a synthetic PA radiograph per image with its labelled findings (inside the real box where the box list has one),
and writes the real release's names and formats into ``out``::

    images/00000001_000.png ...      8-bit grayscale, size x size
    Data_Entry_2017_v2020.csv        the real header and the real rows of the chosen images, verbatim
    BBox_List_2017.csv               the real header and boxes, scaled to the PNG's own pixels (x size/1024)
    train_val_list.txt, test_list.txt  the chosen images, in the real files' order
    segmentation/                    a JSRT + SCR style lung/heart segmentation set (see README.txt there)
    phantom.json                     PhantomSummary, written last: the folder is complete when it exists

Boxes: the real release's PNGs are 1024 px and its boxes are in those pixels; a phantom of size S stores its
boxes in the S-pixel PNG's own pixels, so the folder is self-consistent like the real one at S = 1024.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cxrdist.data.nih import BBOX_LIST, DATA_ENTRY, TEST_LIST, TRAIN_VAL_LIST
from cxrdist.labels import BOX_CLASSES, LABEL_INDEX, LABELS, normalize_label, parse_finding_labels
from cxrdist.phantom.draw import Box, draw_float, draw_radiograph
from cxrdist.phantom.meta import Metadata, default_metadata_dir, load_metadata_cached, select_images
from cxrdist.progress import Progress

__all__ = ["PhantomSummary", "default_metadata_dir", "draw_radiograph", "make_phantom"]

logger = logging.getLogger(__name__)

VERSION = 1
REAL_PNG_SIZE = 1024  # pixel size of the released PNGs, in which BBox_List_2017.csv is written
_UNFINISHED = ".phantom-unfinished"  # marker present while a phantom is being written
# JSRT: 154 nodule (JPCLN) + 93 non-nodule (JPCNN) images; SCR fold1 = odd positions in that list, fold2 = even.
_JSRT_GROUPS = (("JPCLN", 154), ("JPCNN", 93))
_SCR_MASKS = {"heart": "heart", "left clavicle": "left_clavicle", "left lung": "left_lung",
              "right clavicle": "right_clavicle", "right lung": "right_lung"}  # fmt: skip


@dataclass
class PhantomSummary:
    """Counts of a generated phantom (also ``phantom.json``). Per-class dicts use ``LABELS`` names."""

    images: int
    train_val: int
    test: int
    patients: int
    boxes: dict[str, int]  # box rows per box class
    box_images: dict[str, int]  # images with at least one box of the class (all in the test list)
    positives: dict[str, int]  # images labelled with each class
    seg_images: int
    seg_folds: dict[str, int]
    size: int
    seed: int
    difficulty: float
    version: int = VERSION
    box_pixels: str = "image"  # BBox_List_2017.csv is in the PNG's own pixels (real box x size / 1024)


def _image_rng(seed: int, name: str) -> np.random.Generator:
    """Per-image generator: the same image is identical whatever the worker count or order."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _atomic_write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _write_image(path: Path, array: np.ndarray, fmt: str) -> None:
    """Encode to a temporary name and rename, so a killed run never leaves a partial file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    # zlib level 1: half the time of the default level for ~10% larger files (noise does not compress anyway).
    Image.fromarray(array).save(tmp, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
    os.replace(tmp, path)


def _findings(meta: Metadata, name: str, size: int) -> dict[int, list[Box | None]]:
    """Label index -> boxes (in the image's pixels) or [None] for a labelled finding without a box."""
    labels = parse_finding_labels(meta.rows[name].split(",")[1], source=DATA_ENTRY, row=name)
    out: dict[int, list[Box | None]] = {int(c): [None] for c in np.flatnonzero(labels)}
    scale = size / REAL_PNG_SIZE
    for row in meta.boxes.get(name, []):
        c = LABEL_INDEX[normalize_label(row[1])]
        box = tuple(float(v) * scale for v in row[2:6])
        out[c] = [b for b in out.get(c, []) if b is not None] + [box]  # a box implies the finding, drawn there
    return out


def _do_task(task: tuple) -> None:
    """Draw and write one main image (``"nih"``) or one segmentation image with its masks (``"seg"``)."""
    kind, name, root, seed, size, difficulty, extra = task
    if kind == "nih":
        img, _ = draw_radiograph(_image_rng(seed, name), size, extra, difficulty)
        _write_image(Path(root) / "images" / name, img, "PNG")
        return
    # JSRT: 12-bit values stored big-endian with white (dense) = 0; SCR masks are half the image's size.
    nodule = {LABEL_INDEX["Nodule"]: [None]} if name.startswith("JPCLN") else {}
    img, masks = draw_float(_image_rng(seed, f"JSRT/{name}"), 2 * size, nodule, difficulty)
    raw = np.rint((1.0 - img) * 4095.0).astype(">u2")
    _atomic_write(Path(root) / "JSRT" / "All247images" / f"{name}.IMG", raw.tobytes())
    for folder, key in _SCR_MASKS.items():
        half = masks[key].reshape(size, 2, size, 2).mean(axis=(1, 3)) >= 0.5
        _write_image(Path(root) / "SCR" / "scratch" / extra / "masks" / folder / f"{name}.gif",
                     half.astype(np.uint8) * 255, "GIF")  # fmt: skip


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Keep BLAS single-threaded: drawing does many small matrix products that threads only slow down."""
    keys = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict.fromkeys(keys, "1"))  # inherited by spawned workers
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        limits = contextlib.nullcontext()
    else:
        limits = threadpool_limits(1, user_api="blas")
    try:
        with limits:
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_tasks(tasks: list[tuple], workers: int, progress: bool) -> None:
    with _one_blas_thread(), Progress(len(tasks), "phantom", enabled=progress) as bar:
        if workers <= 1 or len(tasks) < 8:
            for t in tasks:
                _do_task(t)
                bar.update()
            return
        # spawn, not fork: the caller may hold threads (torch, loaders) that fork would copy mid-state.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            chunk = max(1, min(32, len(tasks) // (8 * workers)))
            for _ in pool.imap_unordered(_do_task, tasks, chunksize=chunk):
                bar.update()


def _seg_names(count: int) -> list[tuple[str, str]]:
    """(JSRT name, SCR fold) of the first nodule and non-nodule images, in the real 154:93 proportion."""
    full = [f"{prefix}{i:03d}" for prefix, n in _JSRT_GROUPS for i in range(1, n + 1)]
    fold = {name: "fold1" if i % 2 == 0 else "fold2" for i, name in enumerate(full)}  # position 1, 3, ... = fold1
    n_ln = round(count * _JSRT_GROUPS[0][1] / len(full))
    names = full[:n_ln] + full[_JSRT_GROUPS[0][1] : _JSRT_GROUPS[0][1] + count - n_ln]
    return [(name, fold[name]) for name in names]


def _seg_layout(names: list[tuple[str, str]], size: int) -> dict:
    folds = {f: [n for n, g in names if g == f] for f in ("fold1", "fold2")}
    return {
        "format": "JSRT+SCR",
        "phantom": True,
        "version": VERSION,
        "jsrt": {"dir": "JSRT/All247images", "suffix": ".IMG", "width": 2 * size, "height": 2 * size,
                 "dtype": ">u2", "bits": 12, "header_bytes": 0, "white_is_zero": True},
        "scr": {"dir": "SCR/scratch", "masks": "{fold}/masks/{structure}/{name}.gif", "structures": list(_SCR_MASKS),
                "width": size, "height": size, "values": [0, 255], "folds": folds},
        "sides": "'left lung' is the patient's left, on the image's right (PA view)",
    }  # fmt: skip


_SEG_README = """Phantom segmentation set in the JSRT + SCR layout (generated by cxrdist.phantom.generate).

JSRT/All247images/<name>.IMG   raw pixels, no header: {w} x {w}, big-endian uint16 ('>u2'), 12-bit values 0..4095,
                               white (dense) = 0 like the real JSRT files (real: 2048 x 2048)
SCR/scratch/<fold>/masks/<structure>/<name>.gif
                               {m} x {m} GIF, 0 = background, 255 = structure (real: 1024 x 1024, half the image)
structures: heart, left clavicle, left lung, right clavicle, right lung ('left' = patient's left = image right);
lung masks exclude the heart.
folds: fold1 = odd positions of the 247-name JSRT list (JPCLN001..154 then JPCNN001..093), fold2 = even.
The images are synthetic radiographs with exact masks; JPCLN images carry one synthetic nodule.
layout.json holds the sizes, dtype and fold lists; the real release has no layout.json (use 2048 / 1024).
"""


def _start_segmentation(root: Path, seg: list[tuple[str, str]], size: int) -> None:
    """Create the JSRT/SCR folders and write layout.json and README.txt."""
    for folder in _SCR_MASKS:
        for fold in ("fold1", "fold2"):
            (root / "SCR" / "scratch" / fold / "masks" / folder).mkdir(parents=True, exist_ok=True)
    (root / "JSRT" / "All247images").mkdir(parents=True, exist_ok=True)
    _atomic_write(root / "layout.json", json.dumps(_seg_layout(seg, size), indent=2) + "\n")
    _atomic_write(root / "README.txt", _SEG_README.format(w=2 * size, m=size))


def check_phantom_out(out: Path) -> bool:
    """``out`` may be written: missing, empty, or an earlier (or unfinished) phantom (then True)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: a file, not a folder; choose an empty folder")
    was_phantom = (out / "phantom.json").exists() or (out / _UNFINISHED).exists()
    if out.is_dir() and not was_phantom and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty and not a phantom (no phantom.json); choose an empty folder")
    return was_phantom


def check_phantom_settings(num_images: int, size: int, difficulty: float, seg_images: int, workers: int) -> None:
    """The generator's numeric settings (one ValueError naming every bad one)."""
    bad = [
        f"{name}={value} (must be {rule})"
        for name, value, ok, rule in (
            ("num_images", num_images, num_images >= 1, ">= 1"),
            ("size", size, size >= 32, ">= 32"),
            ("difficulty", difficulty, 0.0 <= difficulty <= 1.0, "0..1"),
            ("seg_images", seg_images, 0 <= seg_images <= 247, "0..247"),
            ("workers", workers, workers >= 1, ">= 1"),
        )
        if not ok
    ]
    if bad:
        raise ValueError(f"bad phantom settings: {', '.join(bad)}")


def _prepare_out(out: Path) -> bool:
    """Create ``out``; refuse a non-empty folder unless it is an earlier (or unfinished) phantom, then return True."""
    was_phantom = check_phantom_out(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _UNFINISHED).touch()  # lets a rerun after a kill overwrite this folder
    (out / "phantom.json").unlink(missing_ok=True)  # the folder is complete again only with the new summary
    shutil.rmtree(out / "segmentation", ignore_errors=True)
    return was_phantom


def _write_tables(out: Path, meta: Metadata, chosen: list[str], size: int) -> None:
    keep = set(chosen)
    _atomic_write(out / DATA_ENTRY, "\n".join([meta.header] + [meta.rows[n] for n in chosen]) + "\n")
    scale = size / REAL_PNG_SIZE
    lines = [meta.bbox_header]
    for name in chosen:
        for row in meta.boxes.get(name, []):
            coords = row[2:6] if size == REAL_PNG_SIZE else [repr(float(v) * scale) for v in row[2:6]]
            lines.append(",".join(row[:2] + coords))
    _atomic_write(out / BBOX_LIST, "\n".join(lines) + "\n")
    for fname, names in ((TRAIN_VAL_LIST, meta.train_val), (TEST_LIST, meta.test)):
        _atomic_write(out / fname, "".join(f"{n}\n" for n in names if n in keep))


def _summarize(meta: Metadata, chosen: list[str], seg: list[tuple[str, str]], **params: object) -> PhantomSummary:
    test = set(meta.test)
    boxes, box_images, positives = dict.fromkeys(BOX_CLASSES, 0), dict.fromkeys(BOX_CLASSES, 0), {}
    for name in chosen:
        classes = [normalize_label(r[1]) for r in meta.boxes.get(name, [])]
        for c in classes:
            boxes[c] += 1
        for c in set(classes):
            box_images[c] += 1
    sums = sum(parse_finding_labels(meta.rows[n].split(",")[1], row=n).astype(np.int64) for n in chosen)
    positives = {c: int(v) for c, v in zip(LABELS, np.broadcast_to(sums, (len(LABELS),)))}
    n_test = sum(n in test for n in chosen)
    return PhantomSummary(
        images=len(chosen), train_val=len(chosen) - n_test, test=n_test,
        patients=len({meta.patient[n] for n in chosen}), boxes=boxes, box_images=box_images, positives=positives,
        seg_images=len(seg), seg_folds={f: sum(g == f for _, g in seg) for f in ("fold1", "fold2")}, **params,
    )  # fmt: skip


def make_phantom(
    out: Path,
    *,
    num_images: int = 2000,
    size: int = 1024,
    seed: int = 0,
    difficulty: float = 0.5,
    seg_images: int = 40,
    metadata_dir: Path | None = None,
    workers: int = 1,
    progress: bool = True,
) -> PhantomSummary:
    """Generate a phantom ChestX-ray14 in ``out`` (see the module docstring for the layout).

    Args:
        out: an empty folder, or an earlier phantom to overwrite; created if missing.
        num_images: images wanted; whole patients are chosen to hit it exactly (capped at the release's 112,120).
        size: PNG width and height (the real release: 1024); segmentation images are 2 x size, masks size.
        seed: the same seed gives byte-identical files, whatever ``workers``.
        difficulty: 0..1; higher means fainter findings, more noise and anatomical variation.
        seg_images: JSRT + SCR style segmentation images (0..247), about half per fold.
        metadata_dir: folder with the NIH metadata files (default: :func:`default_metadata_dir`).
        workers: processes drawing images.
        progress: show a meter (a bar on a terminal, else a log line every 30 s).

    Returns:
        The summary also written to ``out/phantom.json``.
    """
    check_phantom_settings(num_images, size, difficulty, seg_images, workers)
    out = Path(out)
    folder = Path(metadata_dir) if metadata_dir is not None else default_metadata_dir()
    meta = load_metadata_cached(folder)
    chosen = select_images(meta, num_images, seed)
    seg = _seg_names(seg_images)
    was_phantom = _prepare_out(out)
    (out / "images").mkdir(exist_ok=True)
    _write_tables(out, meta, chosen, size)
    tasks = [("nih", n, str(out), seed, size, difficulty, _findings(meta, n, size)) for n in chosen]
    if seg:
        _start_segmentation(out / "segmentation", seg, size)
        tasks += [("seg", name, str(out / "segmentation"), seed, size, difficulty, fold) for name, fold in seg]
    logger.info("phantom: drawing %d images and %d segmentation images at %d px into %s", len(chosen), len(seg),
                size, out)  # fmt: skip
    _run_tasks(tasks, workers, progress)
    if was_phantom:  # drop images an earlier, different phantom left behind
        keep = set(chosen)
        for path in (out / "images").iterdir():
            if path.name not in keep:
                path.unlink()
    summary = _summarize(meta, chosen, seg, size=size, seed=seed, difficulty=float(difficulty))
    _atomic_write(out / "phantom.json", json.dumps(asdict(summary), indent=2) + "\n")
    (out / _UNFINISHED).unlink()
    return summary
