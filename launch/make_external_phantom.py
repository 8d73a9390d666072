"""Generate a phantom CheXpert, MIMIC-CXR-JPG or PadChest release (real file names, CSV columns, image formats).

Example: ``python launch/make_external_phantom.py --dataset padchest --out phantom-padchest --patients 60 --size 256``
then ``python launch/write_shards.py --dataset padchest --root phantom-padchest --out shards-padchest --size 256``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cxrdist import cli
from cxrdist.phantom.external import DATASETS, make_external_phantom


def main(argv: list[str] | None = None) -> int:
    """Write the phantom and print its counts (exit 2: bad settings or a non-empty --out, nothing written)."""
    p = cli.parser("make_external_phantom.py", __doc__)
    p.add_argument("--dataset", required=True, choices=DATASETS, help="which release's layout")
    p.add_argument("--out", type=Path, required=True, help="new or empty folder")
    p.add_argument("--patients", type=int, default=40, help="patients (1-2 studies each, some with a lateral)")
    p.add_argument("--size", type=int, default=256, help="image width and height in pixels")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same files")
    p.add_argument("--difficulty", type=float, default=0.5, help="0..1, as for the NIH phantom")
    args: argparse.Namespace = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        counts = make_external_phantom(
            args.out, args.dataset, patients=args.patients, size=args.size, seed=args.seed, difficulty=args.difficulty
        )
    except ValueError as e:
        return cli.usage_exit("make_external_phantom.py", e)
    print(f"phantom {args.dataset}: {counts} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
