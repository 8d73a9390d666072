"""Submit a run: ``python launch/submit.py --nodes 4 --gpus-per-node 8 method=ma data.root=/data/shards``.

Launcher flags (see --help) come first; every other argument is a Hydra override. ``--cluster local`` runs
the same job on this machine; ``--dry-run`` prints the job script and the resolved config.
"""

import sys

from cxrdist.launcher import LaunchError, submit, wait_results


def main() -> int:
    try:
        out = submit(sys.argv[1:])
    except (LaunchError, ValueError, FileNotFoundError) as e:
        print(f"submit: {e}\nnothing was submitted", file=sys.stderr)
        return 2
    if "script" in out:
        print(f"# --- job script ({out['tasks']} task(s) per node) ---\n{out['script']}")
        print(f"# --- resolved config (run dir {out['run_dir']}) ---\n{out['config']}")
        return 0
    print(f"submitted job {out['job_id']} ({out['tasks']} task(s) per node)")
    print(f"run dir: {out['run_dir']}")
    print(f"W&B:     {out['wandb']}")
    print("follow:  " + "\n         ".join(out["follow"]))
    if out["wait"]:
        wait_results(out["job"])  # raises the job's error, if any; survives requeues
        print(f"job {out['job_id']} finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
