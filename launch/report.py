"""Published vs ours, with intervals: ``python launch/report.py RUN_OR_SWEEP_DIR [...] [--baseline RUN] [--out DIR]``.

Each argument is a run dir with test results (its final eval stage, or ``launch/evaluate.py``) or a folder of such
run dirs (a sweep's, a folder of seeds). Several runs make a leaderboard (forest.png) and, with ``--baseline``,
paired tests against that run. A mistake is one line on stderr and exit status 2, before the output folder is
created.

W&B: the leaderboard, per-class table, localization board, paired tests and forest plot also go to ONE W&B run
(job type ``report``; offline, under ``OUT/wandb``, unless WANDB_MODE says otherwise) when every run logged to W&B
(``logger=wandb``, the default), as launch/evaluate.py logs to a run's own W&B run; ``--wandb``/``--no-wandb``
decide instead. Its id comes from the report's inputs: re-running the same report rebuilds that one run (only
when its content changed), never a second (cxrdist/run/report_wandb.py).
"""

import argparse
import sys
from pathlib import Path

from cxrdist import cli
from cxrdist.eval.leaderboard import find_runs
from cxrdist.eval.report import load_run, load_runs, write_runs_report
from cxrdist.eval.report_multi import pick_baseline
from cxrdist.run import report_wandb
from cxrdist.run.preflight import check_run_dir


def main(argv: list[str] | None = None) -> int:
    """Check the run dirs, then write and print the report."""
    p = cli.parser("report.py", __doc__)
    p.add_argument("run_dirs", type=Path, nargs="+", help="run dirs, or folders of run dirs, to report on")
    p.add_argument("--out", type=Path, help="output dir (default: the first run's report/)")
    p.add_argument("--baseline", type=Path, help="run dir (one of the runs) the others are tested against")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples per interval")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                   help="log the report to one W&B run (default: when every run logged to W&B)")  # fmt: skip
    args = p.parse_args(argv)
    try:
        cli.check_positive(resamples=args.resamples)
        dirs = find_runs(args.run_dirs)
        runs = [load_run(check_run_dir(run, what="report on")) | {"label": str(run)} for run in dirs]
        if args.baseline is not None:
            pick_baseline(runs, args.baseline)
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("report.py", e)
    out = args.out or dirs[0] / "report"
    loaded = load_runs(args.run_dirs, args.resamples, args.seed)
    md = write_runs_report(loaded, out, args.baseline, args.resamples, args.seed)
    print(md.read_text())
    print(f"report written to {md} (and its PNGs beside it)")
    if report_wandb.wanted(runs, args.wandb):
        run_id = report_wandb.report_run_id(dirs, args.baseline, args.resamples, args.seed)
        logged = report_wandb.log_report(loaded, out, run_id)
        state = "logged" if logged.built else "unchanged"
        print(f"W&B run {run_id} ({state}): {logged.folder or 'not written (WANDB_MODE=disabled, or see above)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
