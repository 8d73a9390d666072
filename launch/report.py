"""Published vs ours: ``python launch/report.py RUN_DIR [RUN_DIR ...] [--out DIR]`` → report.md + report.png."""

import argparse
import sys
from pathlib import Path

from cxrdist.eval.report import write_report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run_dirs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, help="output dir (default: the first run's report/)")
    args = p.parse_args()
    md = write_report(args.run_dirs, args.out or args.run_dirs[0] / "report")
    print(md.read_text())
    print(f"report written to {md} (and report.png beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
