"""Submit a run: ``python launch/submit.py --nodes 4 --gpus-per-node 8 method=ma data.root=/data/shards``.

Launcher flags (see below) come first; every other argument is a Hydra override. ``--cluster local`` runs the
same job on this machine and shows rank 0's progress until it ends; ``--dry-run`` prints the job script and the
resolved config, anywhere (no Slurm needed). ``-m method=ma,cral seed=0,1,2`` submits every combination as ONE
job array, each in ``runs/<name>/<override-dir>`` (see cxrdist/run/sweep.py). A mistake is one line on stderr and exit
status 2, before anything is created or submitted.
"""

import contextlib
import sys

from cxrdist import cli
from cxrdist.progress import follow
from cxrdist.run.launcher import failure_summary, wait_results
from cxrdist.run.sweep import print_sweep
from cxrdist.run.sweep import submit_any as submit  # a sweep with -m, else one run


def main(argv: list[str] | None = None) -> int:
    """Submit (or preview) the job; with --wait or --cluster local, follow it to the end."""
    try:
        out = submit(sys.argv[1:] if argv is None else argv)
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("submit.py", e)
    if "sweep" in out:
        return print_sweep(out)
    if "script" in out:
        print(f"# --- job script ({out['tasks']} task(s) per node) ---\n{out['script']}")
        print(f"# --- resolved config (run dir {out['run_dir']}) ---\n{out['config']}")
        for note in out["notes"]:
            print(f"# note: {note}")
        return 0
    print(f"submitted job {out['job_id']} ({out['tasks']} task(s) per node)")
    print(f"run dir: {out['run_dir']}")
    print(f"W&B:     {out['wandb']}")
    print("follow:  " + "\n         ".join(out["follow"]), flush=True)
    if out["wait"]:
        try:
            with follow(out["run_dir"]) if out["follows"] else contextlib.nullcontext():
                wait_results(out["job"])  # survives requeues
        except Exception as e:  # the job failed: name the rank that failed first, not a peer's hang-up
            summary = failure_summary(out["run_dir"], e, out["submitted"])
            print(f"job {out['job_id']} failed: {summary}", file=sys.stderr)
            return 1
        print(f"job {out['job_id']} finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
