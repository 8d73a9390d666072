"""Published vs ours, with intervals: ``python launch/report.py RUN_OR_SWEEP_DIR [...] [--baseline RUN] [--out DIR]``.

Each argument is a run dir with test results (its final eval stage, or ``launch/evaluate.py``) or a folder of such
run dirs (a sweep's, a folder of seeds). Several runs make a leaderboard (forest.png) and, with ``--baseline``,
paired tests against that run. A mistake is one line on stderr and exit status 2, before the output folder is
created.

W&B: the leaderboard, per-class table, localization board, paired tests and forest plot also go to ONE W&B run
(job type ``report``; offline, under ``OUT/wandb``, unless WANDB_MODE says otherwise) when every run logged to W&B
(``logger=wandb``, the default), as launch/evaluate.py logs to a run's own W&B run; ``--wandb``/``--no-wandb``
decide instead. Its id comes from the report's inputs: re-running the same report rebuilds that one run (only
when its content changed), never a second (cxrdist/run/report_wandb.py). The work is cxrdist/run/reports.py's
``report``.
"""

import argparse
import sys
from pathlib import Path

from cxrdist import cli
from cxrdist.run import reports


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments; write the report (a usage mistake: one line, exit 2)."""
    p = cli.parser("report.py", __doc__)
    p.add_argument("run_dirs", type=Path, nargs="+", help="run dirs, or folders of run dirs, to report on")
    p.add_argument("--out", type=Path, help="output dir (default: the first run's report/)")
    p.add_argument("--baseline", type=Path, help="run dir (one of the runs) the others are tested against")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples per interval")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                   help="log the report to one W&B run (default: when every run logged to W&B)")  # fmt: skip
    a = p.parse_args(argv)
    try:
        reports.report(a.run_dirs, a.out, a.baseline, a.resamples, a.seed, a.wandb)
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("report.py", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
