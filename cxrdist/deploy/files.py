"""``launch/predict.py``'s work: image files → predictions.csv, heatmap overlays, heatmaps.npz, skipped.csv.

Inputs (files, folders searched recursively, globs) are read by :mod:`cxrdist.data.images` (PNG, JPEG, DICOM;
anything else is a skip with its reason) one batch at a time, so a folder of any size streams. Outputs go only
into ``--out`` (which may not lie inside an input folder: a rerun would read the overlays as inputs):

- ``predictions.csv``: ``file``, ``kind`` (png/jpeg/dicom), the 14 probabilities, then ``call_<class>``: 1/0
  at the model's operating threshold (empty where the class has none), in input order;
- ``heatmaps/<file>_<class>.png`` for each positive call: the heatmap over the original image with a colour
  bar, the probability and threshold in the title, and the boxes the heatmap gives at ``box_threshold``;
- ``heatmaps.npz``: ``files``, ``maps`` (N, 14, h, w) float16 as the method returns them (network-input frame),
  ``windows`` (N, 4) the eval crop (x0, y0, w, h) in the stored image's pixels, ``stored_size``, ``labels``;
  :func:`cxrdist.data.transforms.paste_maps` puts a map over the whole image as the overlays do;
- ``skipped.csv`` (path, reason) and ``summary.json`` (counts, thresholds, the model's provenance).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrdist.data.images import GrayImage, Skip, expand_paths, iter_images, write_skipped_csv
from cxrdist.engine.predictor import Predictor
from cxrdist.eval.boxes import boxes_from_heatmap, heatmap_to_image
from cxrdist.eval.figures import plot_heatmap_overlay
from cxrdist.eval.thresholds import sigmoid
from cxrdist.progress import Progress

logger = logging.getLogger(__name__)
OVERLAY_SIDE = 1024  # overlays draw the original downscaled to this longest side (a 3000 px DICOM → 1024)


def check_request(specs: Sequence[str], out: Path) -> list[Path]:
    """The input files (sorted, each once) and a usable ``out``; ValueError (one line) before anything is written."""
    files = expand_paths(specs)
    out = Path(out).resolve()
    for spec in specs:
        folder = Path(spec).resolve()
        if folder.is_dir() and (out == folder or folder in out.parents):
            raise ValueError(f"--out {out} lies inside the input folder {spec}: choose an --out outside the inputs")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not empty; choose a new folder (nothing is overwritten)")
    return files


def output_name(path: Path, root: Path) -> str:
    """A file's name for its overlays: its path below the inputs' common folder, '/' → '__'."""
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:
        rel = Path(path.name)
    return "__".join(rel.parts)


def _common_root(files: list[Path]) -> Path:
    parents = [str(f.resolve().parent) for f in files]
    return Path(os.path.commonpath(parents)) if parents else Path(".")


def _overlay(pred: Predictor, image: GrayImage, heat: np.ndarray, c: int, prob: float, path: Path) -> int:
    """One positive call's overlay; returns the number of predicted boxes drawn."""
    pixels = image.pixels
    scale = min(1.0, OVERLAY_SIDE / max(pixels.shape))
    if scale < 1.0:
        size = (max(round(pixels.shape[1] * scale), 1), max(round(pixels.shape[0] * scale), 1))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
    height, width = pixels.shape
    boxes = boxes_from_heatmap(heatmap_to_image(heat, (width, height)), pred.box_threshold)
    name, t = pred.labels[c], pred.thresholds[c]
    title = f"{name}: p = {prob:.3f} (threshold {t:.3f})\n{image.path.name}"
    plot_heatmap_overlay(pixels, heat, np.zeros((0, 4)), boxes, path, title=title, colorbar="heatmap (min-max, 0-255)")
    return len(boxes)


class _Writer:
    """Rows of predictions.csv as they come (header first); the CSV is complete when the run ends."""

    def __init__(self, path: Path, labels: list[str]):
        self.file = open(path, "w", newline="")  # noqa: SIM115  (closed in close())
        self.csv = csv.writer(self.file)
        self.csv.writerow(["file", "kind", *labels, *(f"call_{n}" for n in labels)])

    def row(self, image: GrayImage, probs: np.ndarray, calls: np.ndarray) -> None:
        cells = ["" if c < 0 else str(int(c)) for c in calls]
        self.csv.writerow([str(image.path), image.kind, *(f"{p:.6f}" for p in probs), *cells])

    def close(self) -> None:
        self.file.close()


def predict_files(
    pred: Predictor, specs: Sequence[str], out: Path, batch_size: int = 16, progress: bool = True
) -> dict[str, Any]:
    """Predict every readable image of ``specs`` into ``out`` (see the module docstring); returns the summary."""
    files = check_request(specs, out)
    out = Path(out)
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    root, writer = _common_root(files), _Writer(out / "predictions.csv", pred.labels)
    skipped: list[Skip] = []
    names, maps, windows, positives, boxes = [], [], [], 0, 0
    batch: list[GrayImage] = []

    def flush() -> None:
        nonlocal positives, boxes
        stored = [pred.stored(im.pixels) for im in batch]
        logits, raw, geoms = pred.forward(stored)
        probs = sigmoid(logits)
        for im, p, m, g, s, call in zip(batch, probs, raw, geoms, stored, pred.calls(probs)):
            writer.row(im, p, call)
            names.append(str(im.path))
            maps.append(m.astype(np.float16))
            windows.append((g.x0, g.y0, g.w, g.h))
            hits = np.flatnonzero(call == 1)
            full = pred.full_frame(m, g, s) if len(hits) else None
            for c in hits:
                path = out / "heatmaps" / f"{output_name(im.path, root)}_{pred.labels[c]}.png"
                boxes += _overlay(pred, im, full[c], int(c), float(p[c]), path)
            positives += len(hits)
        bar.update(len(batch))
        batch.clear()

    try:
        with Progress(len(files), "predict", "img", enabled=progress) as bar:
            for r in iter_images(files):
                if isinstance(r, Skip):
                    skipped.append(r)
                    logger.warning("skipped %s: %s", r.path, r.reason)
                    bar.update(1)
                    continue
                batch.append(r)
                if len(batch) == batch_size:
                    flush()
            if batch:
                flush()
    finally:
        writer.close()
    counts = {"files": len(files), "positive_calls": positives, "predicted_boxes": boxes}
    return _finish(pred, out, names, maps, windows, skipped, counts)


def _finish(pred: Predictor, out: Path, names: list, maps: list, windows: list, skipped: list, counts: dict) -> dict:
    """heatmaps.npz, skipped.csv and summary.json (``counts``: files, positive_calls, predicted_boxes)."""
    h = maps[0].shape[-2:] if maps else (0, 0)
    np.savez_compressed(
        out / "heatmaps.npz",
        files=np.array(names, dtype=str),
        maps=np.stack(maps) if maps else np.zeros((0, len(pred.labels), *h), np.float16),
        windows=np.array(windows, dtype=np.int64).reshape(-1, 4),
        stored_size=np.array(pred.stored_size),
        labels=np.array(pred.labels),
    )
    num_skipped = write_skipped_csv(skipped, out / "skipped.csv")
    summary = {
        "files": counts["files"],
        "predicted": len(names),
        "skipped": num_skipped,
        "positive_calls": counts["positive_calls"],
        "predicted_boxes": counts["predicted_boxes"],
        "thresholds": dict(zip(pred.labels, pred.thresholds)),
        "model": pred.info,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    logger.info(
        "predicted %d of %d files (%d skipped: %s), %d positive calls → %s",
        len(names),
        counts["files"],
        num_skipped,
        out / "skipped.csv",
        counts["positive_calls"],
        out,
    )
    return summary
