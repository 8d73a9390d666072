"""Paired comparison of two runs on the same test set: ``python launch/compare.py RUN_A RUN_B [--external NAME]``.

Per class: DeLong's test for two correlated AUROCs (Holm-adjusted across classes); the mean AUROC: the paired
patient bootstrap of A − B. Prints the table and writes ``compare.md`` / ``compare.json`` (default: RUN_A/report/).
The runs must have saved test predictions of the same images with the same labels; a mistake is one line on
stderr and exit status 2, before anything is written.

``--external NAME`` compares the runs' results on an external set instead (``RUN/eval/external/NAME/test``, from
``launch/evaluate.py RUN --shards S``): each class on the images that annotate it only (the set's label mask), the
same images, labels and masks required in both; written to ``compare-NAME.md`` / ``.json``.

W&B: the table also goes to ONE W&B run (job type ``compare``; offline under ``OUT/wandb/<compare file stem>``)
under launch/report.py's rule: when both runs logged to W&B, unless ``--wandb``/``--no-wandb`` say otherwise; its id
comes from the inputs, so re-running the same comparison rebuilds that one run (only when its content changed).
"""

import argparse
import sys
from pathlib import Path

from cxrdist import cli
from cxrdist.eval.compare import comparison_table_md
from cxrdist.eval.leaderboard import compare_external, compare_runs, load_predictions, run_labels, write_json
from cxrdist.eval.report import load_run
from cxrdist.run import report_wandb
from cxrdist.run.preflight import check_run_dir


def main(argv: list[str] | None = None) -> int:
    """Check both runs and their keys, then print and write the comparison."""
    p = cli.parser("compare.py", __doc__)
    p.add_argument("run_a", type=Path, help="run dir A")
    p.add_argument("run_b", type=Path, help="run dir B (Δ = A − B)")
    p.add_argument("--external", metavar="NAME", help="compare on RUN/eval/external/NAME/test (e.g. chexpert)")
    p.add_argument("--out", type=Path, help="output dir (default: RUN_A/report/)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                   help="log the comparison to one W&B run (default: when both runs logged to W&B)")  # fmt: skip
    args = p.parse_args(argv)
    try:
        cli.check_positive(resamples=args.resamples)
        a, b = (check_run_dir(r, what="compare") for r in (args.run_a, args.run_b))
        run_a, run_b = (load_run(d) for d in (a, b))
        for run, label in zip((run_a, run_b), run_labels([a, b])):
            run["label"] = label
        if args.external is None:
            for run in (run_a, run_b):
                run["pred"] = load_predictions(run["metrics"]["test"]["path"])
            cmp = compare_runs(run_a, run_b, args.resamples, args.seed)
        else:
            cmp = compare_external(run_a, run_b, args.external, args.resamples, args.seed)
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("compare.py", e)
    md = comparison_table_md(cmp, run_a["label"], run_b["label"])
    out = args.out or args.run_a / "report"
    out.mkdir(parents=True, exist_ok=True)
    stem, what = ("compare", "test") if args.external is None else (f"compare-{args.external}", args.external)
    (out / f"{stem}.md").write_text(f"# {run_a['label']} vs {run_b['label']} ({what})\n\n{md}\n")
    write_json(out / f"{stem}.json", cmp | {"a": str(args.run_a), "b": str(args.run_b)})
    print(md)
    print(f"written to {out / stem}.md and {stem}.json")
    if report_wandb.wanted([run_a, run_b], args.wandb):
        run_id = report_wandb.compare_run_id(a, b, args.external, args.resamples, args.seed)
        logged = report_wandb.log_compare([run_a, run_b], cmp, out / f"{stem}.md", run_id)
        state = "logged" if logged.built else "unchanged"
        print(f"W&B run {run_id} ({state}): {logged.folder or 'not written (WANDB_MODE=disabled, or see above)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
