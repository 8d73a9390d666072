"""Run a method on this machine: ``python launch/local.py --nproc 2 method=chexnet data.root=S run_dir=R``.

Every argument that is not a flag is a Hydra override. Processes use gloo on the CPU (NCCL with GPUs).
"""

import argparse
import sys

from cxrdist.config import compose
from cxrdist.job import run_local


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nproc", type=int, default=1, help="processes (ranks) on this machine")
    p.add_argument("--force", action="store_true", help="discard a run dir that was started with another config")
    args, overrides = p.parse_known_args()
    run_dir = run_local(compose(overrides), nproc=args.nproc, force=args.force)
    print(f"run dir: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
