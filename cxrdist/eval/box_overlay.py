"""A heatmap example as an image with its boxes as data, for a tracker that draws boxes itself (W&B).

:func:`box_overlay` writes the grey image blended with the heatmap (no axes, no drawn boxes) at the
comparison size, and returns the boxes in that image's pixels: ground truth and predicted as separate
groups (W&B shows each as a layer that can be switched off, labelled with the class). The matplotlib
figure of figures.py stays the file a user opens from disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image

from cxrdist.eval.boxes import heatmap_to_image
from cxrdist.labels import LABEL_INDEX

HEAT_ALPHA = 0.35  # the same blend as figures.plot_heatmap_overlay


def _box_list(boxes: np.ndarray, class_id: int, caption: str) -> list[dict[str, Any]]:
    return [
        {
            "minX": float(x0),
            "minY": float(y0),
            "maxX": float(x1),
            "maxY": float(y1),
            "class_id": class_id,
            "caption": caption,
        }
        for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ]


def box_overlay(
    image: np.ndarray, heatmap: np.ndarray, gt: np.ndarray, pred: np.ndarray, class_name: str, out_png: str | Path
) -> dict[str, Any]:
    """Write ``image`` (``(H, W)`` uint8) blended with ``heatmap`` to ``out_png``; return the overlay spec.

    ``gt`` and ``pred``: ``(N, 4)`` ``(x0, y0, x1, y1)`` boxes in the image's pixel-edge frame. The spec is
    ``{"path", "boxes": {"ground_truth": [...], "predictions": [...]}, "class_labels": {id: name}}``, each
    box ``{minX, minY, maxX, maxY, class_id, caption}`` in pixels; the class id is the label's index + 1
    (W&B reserves no id, but 0 reads as "none" in its legend).
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {image.shape}")
    height, width = image.shape
    heat = heatmap_to_image(heatmap, (width, height)).astype(np.float64) / 255.0
    rgb = np.repeat(image[..., None].astype(np.float64) / 255.0, 3, axis=2)
    blend = (1 - HEAT_ALPHA) * rgb + HEAT_ALPHA * colormaps["jet"](heat)[..., :3]
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(blend * 255 + 0.5, 0, 255).astype(np.uint8)).save(out_png)
    cid = LABEL_INDEX[class_name] + 1
    return {
        "path": str(out_png),
        "boxes": {
            "ground_truth": _box_list(gt, cid, f"{class_name} (ground truth)"),
            "predictions": _box_list(pred, cid, f"{class_name} (predicted)"),
        },
        "class_labels": {str(cid): class_name},
    }
