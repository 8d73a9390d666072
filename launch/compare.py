"""Paired comparison of two runs on the same test set: ``python launch/compare.py RUN_A RUN_B [--out DIR]``.

Per class: DeLong's test for two correlated AUROCs (Holm-adjusted across classes); the mean AUROC: the paired
patient bootstrap of A − B. Prints the table and writes ``compare.md`` / ``compare.json`` (default: RUN_A/report/).
The runs must have saved test predictions of the same images with the same labels; a mistake is one line on
stderr and exit status 2, before anything is written.
"""

import sys
from pathlib import Path

from cxrdist import cli
from cxrdist.eval.compare import comparison_table_md
from cxrdist.eval.leaderboard import compare_runs, load_predictions, run_labels, write_json
from cxrdist.eval.report import load_run
from cxrdist.run.preflight import check_run_dir


def main(argv: list[str] | None = None) -> int:
    """Check both runs and their keys, then print and write the comparison."""
    p = cli.parser("compare.py", __doc__)
    p.add_argument("run_a", type=Path, help="run dir A")
    p.add_argument("run_b", type=Path, help="run dir B (Δ = A − B)")
    p.add_argument("--out", type=Path, help="output dir (default: RUN_A/report/)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = p.parse_args(argv)
    try:
        cli.check_positive(resamples=args.resamples)
        a, b = (check_run_dir(r, what="compare") for r in (args.run_a, args.run_b))
        run_a, run_b = (load_run(d) for d in (a, b))
        for run, label in zip((run_a, run_b), run_labels([a, b])):
            run |= {"label": label, "pred": load_predictions(run["metrics"]["test"]["path"])}
        cmp = compare_runs(run_a, run_b, args.resamples, args.seed)
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("compare.py", e)
    md = comparison_table_md(cmp, run_a["label"], run_b["label"])
    out = args.out or args.run_a / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(f"# {run_a['label']} vs {run_b['label']} (test)\n\n{md}\n")
    write_json(out / "compare.json", cmp | {"a": str(args.run_a), "b": str(args.run_b)})
    print(md)
    print(f"written to {out / 'compare.md'} and compare.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
