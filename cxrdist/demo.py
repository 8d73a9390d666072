"""The README's demo: phantom → shards → verify (→ train → evaluate → report as those land).

Each step is skipped when its output is already complete, so ``make demo`` can be rerun.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def _step(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.perf_counter()


def run_data_steps(out: Path, num_images: int, size: int, shard_size: int, workers: int) -> Path:
    """Generate the phantom, write its shards and verify them; return the shard root."""
    from cxrdist.data.phantom import make_phantom
    from cxrdist.data.verify import format_report, verify_dataset
    from cxrdist.data.writer import WriterConfig, write_dataset

    phantom, shards = out / "phantom", out / "shards"
    t0 = _step(f"1. phantom ChestX-ray14: {num_images} images at {size} px → {phantom}")
    if (phantom / "phantom.json").is_file():
        print("   already there (delete it to regenerate)")
    else:
        summary = make_phantom(phantom, num_images=num_images, size=size, seed=0, workers=workers)
        print(f"   {summary}")
    print(f"   {time.perf_counter() - t0:.1f} s")
    t0 = _step(f"2. shards ({shard_size} px JPEG, DALI index beside each tar) → {shards}")
    cfg = WriterConfig(nih_root=str(phantom), out=str(shards), size=shard_size, samples_per_shard=250, workers=workers)
    info = write_dataset(cfg, progress=sys.stderr.isatty())
    for split, i in info.items():
        print(f"   {split:5s} {i['num_samples']:6d} samples, {len(i['shards'])} shard(s)")
    print(f"   {time.perf_counter() - t0:.1f} s")
    t0 = _step("3. verify: checksums, counts, every image decoded")
    print(format_report(verify_dataset(shards)))
    print(f"   {time.perf_counter() - t0:.1f} s")
    return shards


def main(argv: list[str] | None = None) -> int:
    """Run the demo end to end."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--size", type=int, default=256, help="phantom image side")
    p.add_argument("--shard-size", type=int, default=128, help="stored side in the shards")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    run_data_steps(args.out, args.num_images, args.size, args.shard_size, args.workers)
    print(f"\ndemo finished; everything is under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
