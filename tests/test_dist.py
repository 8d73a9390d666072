"""The one rendezvous: ``python -m cxrdist.dist address|port`` is what slurm/train.sbatch asks (the same numbers as
the submitit path's ``port_from_job_id`` and ``own_address``)."""

from __future__ import annotations

import subprocess
import sys

from cxrdist.dist import own_address, port_from_job_id


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cxrdist.dist", *args], capture_output=True, text=True, timeout=120)


def test_sbatch_gets_the_same_port_and_address_as_every_other_launch():
    assert _cli("port", "1234567").stdout.strip() == str(port_from_job_id("1234567")) == str(20000 + 1234567 % 20000)
    assert _cli("address").stdout.strip() == own_address()


def test_a_bad_request_is_a_usage_line():
    bad = _cli("nodes")
    assert bad.returncode == 2 and "usage: python -m cxrdist.dist address | port [JOB_ID]" in bad.stderr
