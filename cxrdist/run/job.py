"""The submitit callable shared by every kind of job: ``Job(cfg_dict, run_dir, lock)``.

``Job.__call__`` exports submitit's dist environment, meets the other ranks through ``dist.rendezvous_address``
(the run dir) and ``dist.port_from_job_id``, then runs ``run_rank``. ``checkpoint()`` only resubmits itself
(state lives on disk), so a requeued job resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import submitit

from cxrdist.dist import port_from_job_id, rendezvous_address
from cxrdist.log import setup_logging
from cxrdist.run.session import run_rank
from cxrdist.run.sigterm import hold_on_sigterm

logger = logging.getLogger(__name__)
_DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class Job:
    """The submitit callable shared by every kind of job (training, evaluation, sharding)."""

    def __init__(self, cfg_dict: dict[str, Any], run_dir: str, lock: str | None = None):
        self.cfg_dict, self.run_dir, self.lock = cfg_dict, run_dir, lock

    def __call__(self) -> dict[str, Any]:
        job_env = submitit.JobEnvironment()
        # export() refuses to overwrite; a debug (in-process) job may inherit a previous run's variables.
        saved = {k: os.environ.pop(k) for k in _DIST_VARS if k in os.environ}
        try:
            if job_env.cluster == "slurm":
                hold_on_sigterm()
            setup_logging(self.run_dir, job_env.global_rank)  # an error before the session also reaches the log
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            attempt = f"{job_env.job_id}-{os.environ.get('SLURM_RESTART_COUNT', '0')}"
            try:
                addr = rendezvous_address(Path(self.run_dir), attempt, job_env.global_rank == 0)
            except Exception:
                logger.exception("rank %d: no rendezvous", job_env.global_rank)
                raise
            os.environ["MASTER_ADDR"] = addr
            os.environ["MASTER_PORT"] = str(port_from_job_id(job_env.job_id))
            os.environ["CXRDIST_DIST_SOURCE"] = "submitit"
            return run_rank(self.cfg_dict, self.run_dir, lock=self.lock)
        finally:
            for k in _DIST_VARS:
                os.environ.pop(k, None)
            os.environ.update(saved)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """On timeout/preemption: resubmit the same job; no collective work here (checkpoints are on disk)."""
        return submitit.helpers.DelayedSubmission(type(self)(self.cfg_dict, self.run_dir, self.lock))
