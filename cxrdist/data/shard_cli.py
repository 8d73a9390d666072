"""Command-line front ends of the shard writer and verifier (``launch/write_shards.py``, ``verify_shards.py``)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from cxrdist import cli
from cxrdist.data.external import DATASETS
from cxrdist.data.external.common import VIEW_FILTERS, WINDOWS_16BIT
from cxrdist.data.external.labelmap import UNCERTAIN_POLICIES
from cxrdist.data.external.padchest import AGE_YEAR, MIN_AGE
from cxrdist.data.format import DataError
from cxrdist.data.nih import SPLIT_SCHEMES
from cxrdist.data.verify import format_report, verify_dataset
from cxrdist.data.writer import WriterConfig, finalize, plan_tasks, prepare_output, write_shards
from cxrdist.files import WriteFailed

logger = logging.getLogger(__name__)


def writer_parser(prog: str = "write_shards.py") -> argparse.ArgumentParser:
    """The writer's arguments (``launch/write_shards.py`` adds the array flags, ``cxrdist/run/shards.py``)."""
    p = cli.parser(prog, "Write WebDataset shards (train/val/test/bbox) from an NIH root or an external set.")
    p.add_argument("--dataset", choices=("nih", *DATASETS), default="nih", help="the release under --root")
    p.add_argument("--root", type=Path, help="the dataset's unpacked folder (real or phantom)")
    p.add_argument("--nih-root", type=Path, help="NIH ChestX-ray14 folder (the same as --root with --dataset nih)")
    p.add_argument("--views", choices=VIEW_FILTERS, default="frontal", help="external sets: frontal views, or all")
    p.add_argument(
        "--uncertain",
        choices=UNCERTAIN_POLICIES,
        default="ignore",
        help="CheXpert/MIMIC uncertain (-1) labels: ignore (masked), zeros or ones (U-Ignore/U-Zeros/U-Ones)",
    )
    p.add_argument(
        "--window16",
        choices=WINDOWS_16BIT,
        default="max",
        help="16-bit PNGs (PadChest): v/max·255 (the NIH writer's rule) or the 0.5–99.5th percentile window",
    )
    p.add_argument(
        "--min-age",
        type=int,
        default=None,
        metavar="YEARS",
        help=f"PadChest: leave out rows with {AGE_YEAR} - PatientBirth <= YEARS or no PatientBirth, counted in "
        f"filtered.jsonl (torchxrayvision's pediatric filter; default {MIN_AGE}; 0 keeps them)",
    )
    p.add_argument("--out", required=True, type=Path, help="output shard root")
    p.add_argument("--size", type=int, default=512, help="stored image side in pixels; 0 keeps the original")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (1..100)")
    p.add_argument("--val-fraction", type=float, default=0.125, help="fraction of train_val patients used as val")
    p.add_argument("--seed", type=int, default=0, help="seed of the val (and random-image) split")
    p.add_argument("--samples-per-shard", type=int, default=1000, help="samples per tar")
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


def check_writer_config(cfg: WriterConfig) -> None:
    """The writer's flags and inputs, checked before the output folder is touched (one-line UsageError)."""
    cli.check_positive(samples_per_shard=cfg.samples_per_shard, workers=cfg.workers)
    if cfg.size < 0 or not 1 <= cfg.quality <= 100:
        raise cli.UsageError(f"--size must be ≥ 0 (0 keeps the original) and --quality 1..100, got {cfg.size}, "
                             f"{cfg.quality}")  # fmt: skip
    if not 0.0 <= cfg.val_fraction < 1.0 or not 0.0 < cfg.test_fraction < 1.0:
        raise cli.UsageError(f"--val-fraction must be in [0, 1) and --test-fraction in (0, 1), got "
                             f"{cfg.val_fraction}, {cfg.test_fraction}")  # fmt: skip
    root = Path(cfg.nih_root)
    if cfg.dataset != "nih":
        if not root.is_dir():
            raise cli.UsageError(f"--root {root}: no such folder; give the unpacked {cfg.dataset} release")
        if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
            raise cli.UsageError(f"--out {cfg.out} is a file; give a folder")
        return
    if not root.is_dir():
        raise cli.UsageError(f"--nih-root {root}: no such folder; give the unpacked NIH ChestX-ray14 folder")
    if not (root / "images").is_dir():
        raise cli.UsageError(f"--nih-root {root}: no images/ folder; unpack images_001..012.tar.gz into {root}")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise cli.UsageError(f"--out {cfg.out} is a file; give a folder")


def config_from_args(args: argparse.Namespace) -> WriterConfig:
    """WriterConfig from parsed writer arguments."""
    if args.root is not None and args.nih_root is not None and args.root != args.nih_root:
        raise cli.UsageError(f"--root {args.root} and --nih-root {args.nih_root} differ; give one of them")
    root = args.root if args.root is not None else args.nih_root
    if root is None:
        raise cli.UsageError("--root is required (the dataset's folder; --nih-root also works for --dataset nih)")
    if args.dataset != "nih" and args.nih_root is not None:
        raise cli.UsageError(f"--nih-root is for --dataset nih; use --root for {args.dataset}")
    if args.min_age is not None and args.dataset != "padchest":
        raise cli.UsageError(f"--min-age is for --dataset padchest (its PatientBirth column), not {args.dataset}")
    if args.min_age is not None and args.min_age < 0:
        raise cli.UsageError(f"--min-age must be ≥ 0 (0 keeps pediatric images), got {args.min_age}")
    return WriterConfig(
        nih_root=str(root),
        dataset=args.dataset,
        views=args.views,
        uncertain=args.uncertain,
        window16=args.window16,
        min_age=MIN_AGE if args.min_age is None else args.min_age,
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


def write_from_args(args: argparse.Namespace, prog: str = "write_shards.py") -> int:
    """Write all shards, then the manifests; print a summary. Exit 2: a usage error (nothing written)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        check_writer_config(cfg)
        plan_tasks(cfg)  # reads and checks the CSVs and lists (errors name the file and row)
        prepare_output(cfg)  # refuses an --out of another writer config
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit(prog, e)
    t0 = time.perf_counter()
    try:
        results = write_shards(cfg, progress=True)
        summary = finalize(cfg)
    except (DataError, WriteFailed) as e:  # bad input, or a write that failed (disk full): named, one line
        print(f"{prog}: {cli.one_line(e)}", file=sys.stderr)
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


def write_main(argv: list[str] | None = None) -> int:
    """The writer here, without the array flags (``launch/write_shards.py`` is ``cxrdist.run.shards.main``)."""
    return write_from_args(writer_parser().parse_args(argv))


def verify_main(argv: list[str] | None = None) -> int:
    """Verify a shard root and print the per-split table (exit 1: it failed; 2: no shard root given)."""
    p = cli.parser("verify_shards.py", "Re-read and check every shard of a shard root.")
    p.add_argument("root", type=Path, help="shard root (the --out of launch/write_shards.py)")
    args = p.parse_args(argv)
    if not (args.root / "_dataset.json").is_file():
        what = "no such folder" if not args.root.is_dir() else "not a shard root (no _dataset.json)"
        return cli.usage_exit(
            "verify_shards.py", cli.UsageError(f"{args.root}: {what}; give the --out of launch/write_shards.py")
        )
    try:
        reports = verify_dataset(args.root, progress=True)
    except (DataError, ValueError, OSError) as e:
        print(f"verify FAILED: {cli.one_line(e)}", file=sys.stderr)
        return 1
    print(format_report(reports))
    print(f"verify OK: {sum(r.samples for r in reports.values())} samples, every image decoded, checksums match")
    return 0
