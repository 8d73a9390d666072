"""Evaluate a run: ``python launch/evaluate.py RUN_DIR [--split test --split bbox] [--stage NAME] [--nproc N]``.

``--shards S --split test``: evaluate on another shard root (an external set written by ``launch/write_shards.py
--dataset chexpert|mimic|padchest``) into ``RUN/eval/external/<name>/<split>``, scoring the classes it annotates;
``<name>`` (``--name``) defaults to S's dataset and its writer options that differ from the defaults, e.g.
``chexpert`` or ``chexpert_uncertain-ones``; a folder holding another shard set's results is refused.

Writes ``RUN/eval/<split>/`` (metrics.json, predictions.npz, auroc.md, roc.png; on bbox also heatmaps.npz,
localization.md and heatmap overlays) and logs them to the run's W&B run. The run dir, the splits and the
stage's weights are checked before any process or W&B run starts (one line, exit status 2).
"""

import sys
from pathlib import Path

from cxrdist import cli
from cxrdist.run import rundir
from cxrdist.run.evaluate import evaluate_run
from cxrdist.run.preflight import check_eval_request

DEFAULT_SPLITS = ["test", "bbox"]


def main(argv: list[str] | None = None) -> int:
    """Check the request, then evaluate on ``--nproc`` local processes."""
    p = cli.parser("evaluate.py", __doc__)
    p.add_argument("run_dir", type=Path, help="run dir of a trained run")
    p.add_argument("--split", action="append", dest="splits", help="test, bbox, val or train (repeatable)")
    p.add_argument("--stage", help="use this training stage's best.pt (default: the method's final model)")
    p.add_argument("--nproc", type=int, default=1, help="evaluation processes on this machine")
    p.add_argument("--shards", help="evaluate on this shard root instead (an external set; default split: test)")
    p.add_argument("--name", help="with --shards: the results' folder RUN/eval/external/<name> (default: the "
                   "shards' dataset and non-default writer options, e.g. chexpert_uncertain-ones)")  # fmt: skip
    args = p.parse_args(argv)
    splits = args.splits or (["test"] if args.shards else DEFAULT_SPLITS)  # not argparse's default (append)
    try:
        check_eval_request(args.run_dir, splits, args.stage, args.nproc, args.shards, args.name)
        rundir.check_lock(args.run_dir)  # a run dir a job is using is refused (one line naming the job)
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("evaluate.py", e)
    out = evaluate_run(args.run_dir, splits, stage=args.stage, nproc=args.nproc, shards=args.shards, name=args.name)
    print(f"evaluation written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
