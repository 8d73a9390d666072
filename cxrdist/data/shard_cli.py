"""Command-line front ends of the shard writer and verifier (``shards/write.py``, ``shards/verify.py``)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from cxrdist.data.nih import SPLIT_SCHEMES, DataError
from cxrdist.data.verify import format_report, verify_dataset
from cxrdist.data.writer import WriterConfig, finalize, write_shards

logger = logging.getLogger(__name__)


def writer_parser() -> argparse.ArgumentParser:
    """Arguments of ``shards/write.py`` (shared with ``launch/shard.py``)."""
    p = argparse.ArgumentParser(description="Write WebDataset shards (train/val/test/bbox) from an NIH root.")
    p.add_argument("--nih-root", required=True, type=Path, help="NIH ChestX-ray14 folder (real or phantom)")
    p.add_argument("--out", required=True, type=Path, help="output shard root")
    p.add_argument("--size", type=int, default=512, help="stored image side in pixels; 0 keeps the original")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality")
    p.add_argument("--val-fraction", type=float, default=0.125, help="fraction of train_val patients used as val")
    p.add_argument("--seed", type=int, default=0, help="seed of the val (and random-image) split")
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument(
        "--split-scheme",
        choices=SPLIT_SCHEMES,
        default="official",
        help="official lists, or zhao2021's random image-level train/test split",
    )
    p.add_argument("--test-fraction", type=float, default=0.3, help="test share under --split-scheme random-image")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip bad images (written to skipped.jsonl) instead of stopping"
    )
    p.add_argument("--workers", type=int, default=1, help="writer processes")
    return p


def config_from_args(args: argparse.Namespace) -> WriterConfig:
    """WriterConfig from parsed writer arguments."""
    return WriterConfig(
        nih_root=str(args.nih_root),
        out=str(args.out),
        size=args.size,
        quality=args.quality,
        val_fraction=args.val_fraction,
        seed=args.seed,
        samples_per_shard=args.samples_per_shard,
        split_scheme=args.split_scheme,
        test_fraction=args.test_fraction,
        skip_bad=args.skip_bad,
        workers=args.workers,
    )


def write_main(argv: list[str] | None = None) -> int:
    """Write all shards, then the manifests; print a summary."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = writer_parser().parse_args(argv)
    cfg = config_from_args(args)
    t0 = time.perf_counter()
    try:
        results = write_shards(cfg, progress=sys.stderr.isatty())
        summary = finalize(cfg)
    except DataError as e:
        logger.error("%s", e)
        return 1
    wrote = [r for r in results if not r["reused"]]
    print(
        f"wrote {len(wrote)} shard(s), reused {len(results) - len(wrote)} complete one(s) "
        f"in {time.perf_counter() - t0:.1f} s → {cfg.out}"
    )
    for split, info in summary.items():
        print(
            f"  {split:5s} {info['num_samples']:7d} samples in {len(info['shards'])} shard(s), "
            f"{info['num_skipped']} skipped"
        )
    return 0


def verify_main(argv: list[str] | None = None) -> int:
    """Verify a shard root and print the per-split table."""
    p = argparse.ArgumentParser(description="Re-read and check every shard of a shard root.")
    p.add_argument("root", type=Path)
    args = p.parse_args(argv)
    try:
        reports = verify_dataset(args.root)
    except (DataError, ValueError, OSError) as e:
        print(f"verify FAILED: {e}", file=sys.stderr)
        return 1
    print(format_report(reports))
    print(f"verify OK: {sum(r.samples for r in reports.values())} samples, every image decoded, checksums match")
    return 0
