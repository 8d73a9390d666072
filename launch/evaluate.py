"""Evaluate a run: ``python launch/evaluate.py RUN_DIR [--split test --split bbox] [--stage NAME] [--nproc N]``.

Writes ``RUN/eval/<split>/`` (metrics.json, predictions.npz, auroc.md, roc.png; on bbox also heatmaps.npz,
localization.md and heatmap overlays) and logs them to the run's W&B run.
"""

import argparse
import sys
from pathlib import Path

from cxrdist.job import evaluate_run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", action="append", dest="splits", help="test, bbox, val, train (repeatable)")
    p.add_argument("--stage", help="use this training stage's best.pt (default: the method's final model)")
    p.add_argument("--nproc", type=int, default=1, help="evaluation processes on this machine")
    args = p.parse_args()
    out = evaluate_run(args.run_dir, args.splits or ["test", "bbox"], stage=args.stage, nproc=args.nproc)
    print(f"evaluation written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
