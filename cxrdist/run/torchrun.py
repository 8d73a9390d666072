"""torchrun entry (``slurm/train.sbatch``): ``torchrun ... --module cxrdist.run.torchrun run_dir=R method=...``.

Every rank composes the same overrides; rank 0 prepares the run dir (refusing one started with another
config, or held by another live job) and broadcasts the resolved config, so every rank runs exactly what
``RUN/config.yaml`` says. Under Slurm the run dir's lock token is the job id, so a requeue of the job passes,
and SIGTERM is taken as on the submitit path (:mod:`cxrdist.run.sigterm`).
"""

from __future__ import annotations

import os
import sys

from cxrdist import dist
from cxrdist.config import compose, to_container
from cxrdist.run import rundir
from cxrdist.run.prepare import prepare_run
from cxrdist.run.session import run_rank
from cxrdist.run.sigterm import hold_on_sigterm


def main(argv: list[str] | None = None) -> int:
    """Prepare on rank 0, then run the method's stages on every rank."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id:  # the same SIGTERM behaviour as the submitit path: log, mark preempted, freeze until the kill
        hold_on_sigterm()
    env = dist.from_environment()
    dist.init(env)
    lock = f"slurm-{job_id}" if job_id else rundir.new_token()
    cfg_dict, error = None, None
    if env.is_main:
        try:
            cfg = compose(list(sys.argv[1:] if argv is None else argv))
            prepare_run(cfg, lock=lock, role=f"Slurm job {job_id}" if job_id else "a torchrun job")
            cfg_dict = to_container(cfg)
        except Exception as e:  # reported on every rank, then all exit
            error = f"{type(e).__name__}: {e}"
    cfg_dict, error, lock = dist.broadcast_object((cfg_dict, error, lock))
    if error is not None:
        print(f"cxrdist.run.torchrun: {error}", file=sys.stderr)
        dist.shutdown()
        return 2
    run_rank(cfg_dict, cfg_dict["run_dir"], lock=lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
