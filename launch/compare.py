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
The work is cxrdist/run/reports.py's ``compare``.
"""

import argparse
import sys
from pathlib import Path

from cxrdist import cli
from cxrdist.run import reports


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments; compare (a usage mistake: one line, exit 2)."""
    p = cli.parser("compare.py", __doc__)
    p.add_argument("run_a", type=Path, help="run dir A")
    p.add_argument("run_b", type=Path, help="run dir B (Δ = A − B)")
    p.add_argument("--external", metavar="NAME", help="compare on RUN/eval/external/NAME/test (e.g. chexpert)")
    p.add_argument("--out", type=Path, help="output dir (default: RUN_A/report/)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                   help="log the comparison to one W&B run (default: when both runs logged to W&B)")  # fmt: skip
    a = p.parse_args(argv)
    try:
        reports.compare(a.run_a, a.run_b, a.external, a.out, a.resamples, a.seed, a.wandb)
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("compare.py", e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
