"""Run a method on this machine: ``python launch/local.py --nproc 2 method=chexnet data.root=S run_dir=R``.

Flags first, then Hydra overrides (key=value). Processes use gloo on the CPU (NCCL with GPUs). Mistakes in the
command (a typo'd key, no shards, a run dir of another config, ...) are one line on stderr and exit status 2,
before the run dir exists.
"""

import sys

from cxrdist import cli
from cxrdist.config import compose
from cxrdist.run import rundir
from cxrdist.run.local import check_local_gpus, run_prepared
from cxrdist.run.prepare import prepare_run


def main(argv: list[str] | None = None) -> int:
    """Check the command, prepare the run dir, run every rank here."""
    p = cli.parser("local.py", __doc__)
    p.add_argument("--nproc", type=int, default=1, help="processes (ranks) on this machine")
    p.add_argument("--force", action="store_true", help="discard a run dir that was started with another config")
    args, extra = p.parse_known_args(argv)
    try:
        overrides = cli.check_overrides(extra, p)
        cli.check_positive(nproc=args.nproc)
        cfg = compose(overrides)
        check_local_gpus(args.nproc)
        lock = rundir.new_token()  # the run dir is this run's until its ranks end
        run_dir = prepare_run(cfg, force=args.force, lock=lock, role="a local run")
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("local.py", e)
    run_prepared(cfg, run_dir, nproc=args.nproc, lock=lock)
    print(f"run dir: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
