"""Submit a run: ``python launch/submit.py --nodes 4 --gpus-per-node 8 method=ma data.root=/data/shards``.

Launcher flags (see below) come first; every other argument is a Hydra override. ``--cluster local`` runs the
same job on this machine and shows rank 0's progress until it ends; ``--dry-run`` prints the job script and the
resolved config, anywhere (no Slurm needed). ``-m method=ma,cral seed=0,1,2`` submits every combination as ONE
job array, each in ``runs/<name>/<override-dir>`` (see cxrdist/run/sweep.py). A mistake is one line on stderr and exit
status 2, before anything is created or submitted.
"""

import sys

from cxrdist import cli
from cxrdist.run.launcher import show_submission
from cxrdist.run.sweep import print_sweep
from cxrdist.run.sweep import submit_any as submit  # a sweep with -m, else one run


def main(argv: list[str] | None = None) -> int:
    """Submit (or preview) the job; with --wait or --cluster local, follow it to the end."""
    try:
        out = submit(sys.argv[1:] if argv is None else argv)
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("submit.py", e)
    return print_sweep(out) if "sweep" in out else show_submission(out)


if __name__ == "__main__":
    sys.exit(main())
