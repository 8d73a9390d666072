"""One W&B run per run dir: ``python launch/wandb_sync.py RUN [--watch [SECONDS]] [--no-sync]``.

Builds ONE consolidated offline W&B run from the run dir's own record (every metrics.jsonl row once, in step
order, across requeues and evaluations; images with box overlays; tables; the true end state) in
``RUN/wandb/consolidated/``, then ``wandb sync``s it when W&B credentials are there. Running it again with
nothing new builds and syncs nothing. ``--watch`` repeats this from a login node while the job runs, and once
more when it ends. A mistake is one line on stderr and exit status 2, before anything is written.
"""

import sys
from pathlib import Path

from cxrdist import cli
from cxrdist.run import wandb_sync


def main(argv: list[str] | None = None) -> int:
    """Consolidate (and sync) once, or watch until the job holding the run dir ends."""
    p = cli.parser("wandb_sync.py", __doc__)
    p.add_argument("run_dir", type=Path, help="the run dir (RUN)")
    p.add_argument("--watch", type=float, nargs="?", const=300.0, metavar="SECONDS", help="re-sync every SECONDS")
    p.add_argument("--no-sync", action="store_true", help="only build the consolidated offline run")
    args = p.parse_args(argv)
    try:
        cli.check_positive(watch=args.watch)
        wandb_sync.plan(args.run_dir)  # a run dir without W&B records is refused before anything is written
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("wandb_sync.py", e)
    if args.watch:
        wandb_sync.watch(args.run_dir, args.watch, do_sync=not args.no_sync)
        return 0
    result = wandb_sync.consolidate(args.run_dir)
    if not args.no_sync:
        wandb_sync.sync(args.run_dir, result)
    print(wandb_sync.describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
