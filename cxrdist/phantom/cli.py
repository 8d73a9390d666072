"""``launch/make_phantom.py``: generate the phantom ChestX-ray14 (an NIH-layout folder with synthetic radiographs).

Example: ``python launch/make_phantom.py --out phantom --num-images 2000 --size 256 --workers 2``
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from cxrdist import cli
from cxrdist.labels import BOX_CLASSES
from cxrdist.phantom.generate import PhantomSummary, check_phantom_out, check_phantom_settings, make_phantom
from cxrdist.phantom.meta import default_metadata_dir, load_metadata_cached


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = cli.parser("make_phantom.py", __doc__)
    p.add_argument("--out", type=Path, required=True, help="empty folder (or an earlier phantom to overwrite)")
    p.add_argument("--num-images", type=int, default=2000, help="images, met exactly with whole patients")
    p.add_argument("--size", type=int, default=1024, help="PNG width and height (the real release: 1024)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical files")
    p.add_argument("--difficulty", type=float, default=0.5, help="0..1: fainter findings, more noise and variation")
    p.add_argument("--seg-images", type=int, default=40, help="JSRT + SCR style segmentation images (0..247)")
    p.add_argument("--workers", type=int, default=1, help="drawing processes")
    p.add_argument(
        "--metadata-dir",
        type=Path,
        default=None,
        help="NIH metadata folder ($CXRDIST_NIH_METADATA, else cxrdist's copy)",
    )
    return p.parse_args(argv)


def check_phantom_args(args: argparse.Namespace) -> None:
    """The settings, the metadata folder and ``--out``, checked before anything is drawn or created."""
    check_phantom_settings(args.num_images, args.size, args.difficulty, args.seg_images, args.workers)
    if args.metadata_dir is not None and not args.metadata_dir.is_dir():
        raise cli.UsageError(f"--metadata-dir {args.metadata_dir}: no such folder; leave it out to use cxrdist's copy")
    load_metadata_cached(args.metadata_dir or default_metadata_dir())  # names the missing file or bad row
    check_phantom_out(args.out)


def format_summary(s: PhantomSummary, out: Path, seconds: float) -> str:
    """A readable report of a generated phantom."""
    lines = [
        f"phantom: {s.images} images of {s.size} px from {s.patients} patients in {seconds:.1f} s -> {out}",
        f"  train_val {s.train_val}, test {s.test}; seed {s.seed}, difficulty {s.difficulty}",
        "  test images with boxes, per class (boxes):",
    ]
    lines += [f"    {c:<14s} {s.box_images[c]:4d} ({s.boxes[c]})" for c in BOX_CLASSES]
    lines.append("  positives: " + ", ".join(f"{c} {n}" for c, n in s.positives.items()))
    lines.append(f"  segmentation: {s.seg_images} images (fold1 {s.seg_folds['fold1']}, fold2 {s.seg_folds['fold2']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the generator and print its summary."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    try:
        check_phantom_args(args)
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("make_phantom.py", e)
    summary = make_phantom(
        args.out,
        num_images=args.num_images,
        size=args.size,
        seed=args.seed,
        difficulty=args.difficulty,
        seg_images=args.seg_images,
        metadata_dir=args.metadata_dir,
        workers=args.workers,
    )
    print(format_summary(summary, args.out, time.perf_counter() - t0))
    return 0
