"""Published vs ours: ``python launch/report.py RUN_DIR [RUN_DIR ...] [--out DIR]`` → report.md + report.png.

Each RUN_DIR must be a run with test results (its final eval stage, or ``launch/evaluate.py``); a mistake is one
line on stderr and exit status 2, before the output folder is created.
"""

import sys
from pathlib import Path

from cxrdist import cli
from cxrdist.eval.report import load_run, write_report
from cxrdist.preflight import check_run_dir


def main(argv: list[str] | None = None) -> int:
    """Check the run dirs, then write and print the report."""
    p = cli.parser("report.py", __doc__)
    p.add_argument("run_dirs", type=Path, nargs="+", help="run dirs to compare")
    p.add_argument("--out", type=Path, help="output dir (default: the first run's report/)")
    args = p.parse_args(argv)
    try:
        for run in args.run_dirs:
            load_run(check_run_dir(run, what="report on"))  # raises if the run has no test metrics
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("report.py", e)
    md = write_report(args.run_dirs, args.out or args.run_dirs[0] / "report")
    print(md.read_text())
    print(f"report written to {md} (and report.png beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
