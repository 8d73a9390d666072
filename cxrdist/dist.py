"""Distributed environment: the one rendezvous (addresses and ports for local spawn, torchrun, Slurm/submitit and
``slurm/train.sbatch``), one builder for Slurm, torchrun and a single process; small collective helpers.

Slurm: ranks from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; MASTER_ADDR is the first node's *address*
(resolved on the node that owns it and passed through the environment, or resolved here from the node list),
because compute-node names often do not resolve from other nodes; the port is derived from the job id so two
jobs on one node do not collide. NCCL when CUDA is present, else gloo. The device is chosen by local rank.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # single | torchrun | slurm | submitit

    @property
    def is_main(self) -> bool:
        """True on global rank 0."""
        return self.rank == 0

    @functools.cached_property
    def device(self) -> torch.device:
        """The device this rank computes on: cuda:<local_rank> when CUDA is available, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")

    @functools.cached_property
    def backend(self) -> str:
        """NCCL with CUDA, gloo without."""
        return "nccl" if torch.cuda.is_available() else "gloo"


def cpu_threads(env: DistEnv) -> int:
    """CPU threads for this rank's torch ops: ``OMP_NUM_THREADS`` when set, else its share of the CPUs.

    The share is the Slurm task's CPUs (``SLURM_CPUS_PER_TASK``), else this process's CPUs divided among the
    node's ranks. torch's own default (every core, in every rank) oversubscribes a node running several ranks:
    measured on 2 cores, 2 submitit-local ranks trained 13x slower (10 steps in 222 s instead of 16.6 s).
    """
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
    return max(1, len(os.sched_getaffinity(0)) // max(1, env.local_world_size))


def port_from_job_id(job_id: str | int) -> int:
    """A port in [20000, 40000) derived from the Slurm job id (stable across a job's tasks)."""
    digits = "".join(c for c in str(job_id) if c.isdigit()) or "0"
    return 20000 + int(digits) % 20000


def free_port() -> int:
    """An unused TCP port on the loopback interface (local spawn)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    """The torchrun-style variables of local rank ``rank`` (one machine, loopback rendezvous on ``port``)."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "CXRDIST_DIST_SOURCE": "local",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }


def own_address() -> str:
    """This node's first address (``hostname -I``), or 127.0.0.1 when it has none."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10, check=True).stdout
        return out.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "127.0.0.1"


def rendezvous_address(run_dir: Path, attempt: str, is_main: bool, timeout_s: float = 600.0) -> str:
    """The master address, passed through the shared run dir: node names need not resolve.

    Global rank 0 writes its own address to ``RUN/.rendezvous/<attempt>``; the others wait for the file.
    ``attempt`` includes the requeue count, so a requeued job never reads its previous life's address.
    """
    path = run_dir / ".rendezvous" / attempt
    if is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{attempt}.tmp")
        tmp.write_text(own_address())
        os.replace(tmp, path)
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: rank 0 did not publish its address within {timeout_s:.0f} s")
        time.sleep(0.5)
    return path.read_text().strip()


def first_node_address(nodelist: str) -> str:
    """The first host of a Slurm node list, as an IP address when it resolves here, else the name."""
    try:
        host = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=30
        ).stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        host = nodelist.split(",")[0].split("[")[0]
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def from_environment(env: dict[str, str] | None = None) -> DistEnv:
    """Build the DistEnv from torchrun's or Slurm's variables, else a single process."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, submitit's export, or a hand-made launch
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", 1)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            source=env.get("CXRDIST_DIST_SOURCE", "torchrun"),
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        addr = env.get("MASTER_ADDR") or first_node_address(env.get("SLURM_JOB_NODELIST", "127.0.0.1"))
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            local_world_size=int(env.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0]),
            master_addr=addr,
            master_port=int(env.get("MASTER_PORT") or port_from_job_id(env.get("SLURM_JOB_ID", 0))),
            source="slurm",
        )
    return DistEnv()


def init(env: DistEnv, timeout_s: int = 1800) -> None:
    """Join the process group (no-op for one process); pin the CUDA device first."""
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    if env.world_size == 1 or torch_dist.is_initialized():
        return
    torch_dist.init_process_group(
        backend=env.backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=timeout_s),
        device_id=env.device if env.device.type == "cuda" else None,
    )
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    logger.info(
        "rank %d/%d joined %s via %s:%d (%s) on node %s",
        env.rank,
        env.world_size,
        env.backend,
        env.master_addr,
        env.master_port,
        env.source,
        node,
    )


def shutdown() -> None:
    """Leave the process group if one is up."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def is_distributed() -> bool:
    """True when a process group with more than one rank is up."""
    return torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def barrier() -> None:
    """Barrier when distributed; no-op otherwise."""
    if is_distributed():
        torch_dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Gather one picklable object from every rank (a one-element list when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s object on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (returns the tensor)."""
    if is_distributed():
        torch_dist.all_reduce(t)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank (e.g. a NaN loss seen by one rank stops all)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t).item() > 0)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (BatchNorm running statistics ...); no-op when not distributed.

    DDP broadcasts buffers at the start of each forward, so after training steps every rank holds the
    statistics of its own last batch: without this, ranks would validate with different models, and a resumed
    run (whose ranks all load rank 0's saved buffers) would validate differently from an uninterrupted one.
    """
    if not is_distributed():
        return
    for buf in module.buffers():
        torch_dist.broadcast(buf.data, src=src)


def main(argv: list[str] | None = None) -> int:
    """``python -m cxrdist.dist address|port [JOB_ID]``: what ``slurm/train.sbatch`` rendezvouses on.

    ``address``: this node's address (run on the job's first node); ``port``: the job's port
    (``port_from_job_id``, of ``$SLURM_JOB_ID`` unless given), the same for every requeue of the job.
    """
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["address"] and len(args) == 1:
        print(own_address())
    elif args[:1] == ["port"] and len(args) <= 2:
        job_id = args[1] if len(args) == 2 else os.environ.get("SLURM_JOB_ID")
        if not job_id:
            print("cxrdist.dist port: no job id (give one, or run inside a Slurm job)", file=sys.stderr)
            return 2
        print(port_from_job_id(job_id))
    else:
        print("usage: python -m cxrdist.dist address | port [JOB_ID]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
