"""``launch/write_shards.py``: the one shard-writing entry, here (``--workers N``) or as an array job (``--array N``).

Without ``--array`` the writer runs in this process (``data/shard_cli.py``); with it, each array task writes
one range of shards (resumable: rerun the same command after a failure) and a job that depends on the array
writes the manifests.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import submitit

from cxrdist import cli
from cxrdist.data.shard_cli import check_writer_config, config_from_args, write_from_args, writer_parser
from cxrdist.data.writer import WriterConfig, finalize, plan_tasks, prepare_output, write_shards
from cxrdist.run.launcher import check_slurm, wait_results


def shard_parser() -> argparse.ArgumentParser:
    """The writer's flags plus the array flags."""
    p = writer_parser(prog="write_shards.py")
    add_array_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Write here, or submit the array and the manifest job (``--array N``)."""
    argv = sys.argv[1:] if argv is None else argv
    args = shard_parser().parse_args(argv)
    if args.array is None:
        return write_from_args(args, prog="write_shards.py")
    try:
        out = submit_sharding(argv)
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("write_shards.py", e)
    print(f"array jobs {', '.join(out['array'])} write shard ranges {out['ranges']}")
    print(f"manifest job {out['finalize']} runs after them; output: {out['out']}")
    print(f"then: python launch/verify_shards.py {out['out']}")
    return 0


def write_shard_range(cfg_dict: dict[str, Any], start: int, stop: int) -> dict[str, int]:
    """One array task of ``write_shards.py --array N``: write shards ``start..stop`` of the task list (resumable)."""
    done = write_shards(WriterConfig(**cfg_dict), start, stop, progress=False)
    return {"start": start, "stop": stop, "written": sum(not r["reused"] for r in done), "shards": len(done)}


def finalize_shards(cfg_dict: dict[str, Any]) -> dict[str, int]:
    """The job after the array: check every shard, write the manifests."""
    return {split: info["num_samples"] for split, info in finalize(WriterConfig(**cfg_dict)).items()}


def add_array_flags(p: argparse.ArgumentParser) -> None:
    """The flags that turn the writer into a Slurm (or local submitit) array."""
    g = p.add_argument_group("as an array job (--array N: N tasks on a cluster instead of writing here)")
    g.add_argument("--array", type=int, default=None, help="array tasks (shard ranges); default: write here")
    g.add_argument("--cluster", default="slurm", choices=("slurm", "local"), help="where the array tasks run")
    g.add_argument("--partition", help="Slurm partition")
    g.add_argument("--account", help="Slurm account")
    g.add_argument("--timeout-min", type=int, default=240, help="time limit per array task")
    g.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per array task (default: --workers)")
    g.add_argument("--wait", action="store_true", help="wait for the manifest job")


def submit_sharding(argv: list[str]) -> dict[str, Any]:
    """The shard writer as a Slurm array (one task per shard range), then the manifests (``--array N``)."""
    p = shard_parser()
    args = p.parse_args(argv)
    if args.array is None:
        raise cli.UsageError("--array N is required to submit the writer as an array job")
    cli.check_positive(array=args.array, timeout_min=args.timeout_min, cpus_per_task=args.cpus_per_task)
    cfg = config_from_args(args)
    check_writer_config(cfg)
    num = len(plan_tasks(cfg))  # reads and checks the CSVs and lists
    if args.cluster == "slurm":
        check_slurm()
    prepare_output(cfg)  # refuses an output dir of another config before anything is submitted
    bounds = [round(i * num / args.array) for i in range(args.array + 1)]
    ranges = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    folder = Path(cfg.out) / "_submitit"
    cfg_dict = dataclasses.asdict(cfg)
    if args.cluster == "slurm":
        ex = submitit.SlurmExecutor(folder=folder)
        params = {
            "time": args.timeout_min,
            "job_name": "cxrdist-shards",
            "partition": args.partition,
            "account": args.account,
            "cpus_per_task": args.cpus_per_task or cfg.workers,
            "ntasks_per_node": 1,
        }
        ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    else:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=args.timeout_min)
    jobs = ex.map_array(write_shard_range, [cfg_dict] * len(ranges), [a for a, _ in ranges], [b for _, b in ranges])
    if args.cluster == "slurm":
        ex.update_parameters(dependency="afterok:" + ":".join(j.job_id for j in jobs), job_name="cxrdist-manifest")
    else:
        for j in jobs:
            j.results()
    final = ex.submit(finalize_shards, cfg_dict)
    if args.wait:
        for j in jobs:
            wait_results(j)
        wait_results(final)
    return {
        "array": [j.job_id for j in jobs],
        "ranges": ranges,
        "finalize": final.job_id,
        "out": cfg.out,
        "final_job": final,
    }
