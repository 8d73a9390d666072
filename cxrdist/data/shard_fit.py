"""Do the shards hold the pixels a recipe needs? Checked at run start, before anything is written.

The writer stores every image at ``--size`` px (antialiased bilinear, default 512) or at its source size
(``--size 0``). A recipe's first resize then starts from the stored pixels, not from the source ones:

- ``resize_nearest`` (zhao2021: "nearest neighbor interpolation to scale the images to ... 512*512") means sampling
  the *source* pixels; from shards stored at another size it samples already-resized pixels (and from 512-px
  shards to 512 it does nothing at all), so it needs shards at the source size.
- ``resize`` to S from shards stored below S upsamples: the detail between S and the stored size is gone.

Either gives a warning naming the stage, the sizes and the writer command that writes suitable shards (a
warning, not an error: smaller shards are a legitimate budget choice, but the run is then not the paper's input).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrdist.data.format import read_index, read_json


def first_sample_meta(root: str | Path, split: str = "train") -> dict[str, Any] | None:
    """The JSON metadata of the first sample of ``split`` (None if the split has none)."""
    info = read_json(Path(root) / split / "_info.json")
    for shard in info["shards"]:
        tar = Path(root) / split / shard["shard"]
        entries = read_index(tar.with_suffix(".idx"))
        if entries:
            offset, size = entries[0].members["json"]
            with open(tar, "rb") as f:
                f.seek(offset)
                return json.loads(f.read(size))
    return None


def _first_resize(ops: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return next((op for op in ops if op["op"] in ("resize", "resize_nearest")), None)


def source_pixel_warnings(root: str | Path, recipes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One message per training stage whose first resize needs source pixels the shards at ``root`` do not have.

    ``recipes``: stage name → ``{"train": ops, "eval": ops}``.
    """
    stored = int(read_json(Path(root) / "_dataset.json")["config"].get("size") or 0)
    if stored == 0:
        return []  # every image kept at its source size
    meta = first_sample_meta(root)
    source = int(max(meta["source_size"])) if meta else stored
    if source == stored:
        return []  # the source images are already this size (e.g. a phantom drawn at it)
    fix = (
        f"to match the paper, write shards at the source size: python launch/write_shards.py --nih-root <NIH root> "
        f"--out <new dir> --size 0 (or --size {source}), and set data.root to them"
    )
    out = []
    for stage, parts in recipes.items():
        op = _first_resize([*parts.get("train", []), *parts.get("eval", [])])
        if op is None:
            continue
        if op["op"] == "resize_nearest":
            what = "does nothing" if op["size"] == stored else "resamples those resized pixels"
            out.append(
                f"stage {stage}: the recipe resizes the source images with nearest neighbour to {op['size']} px, "
                f"but {root} stores them at {stored} px (antialiased bilinear from {source} px), so the nearest "
                f"resize {what}; {fix}"
            )
        elif op["size"] > stored:
            out.append(
                f"stage {stage}: the recipe resizes to {op['size']} px, but {root} stores images at {stored} px "
                f"(from {source} px): they are upsampled; write shards with --size {op['size']} or more "
                f"(python launch/write_shards.py ... --size {min(op['size'], source)})"
            )
    return out
