"""Shard the NIH release as a Slurm array: ``python launch/shard.py --nih-root R --out S --array 16``.

Each array task writes one range of shards (resumable: rerun the same command after a failure); a job that
depends on the array writes the manifests. Writer flags are those of ``shards/write.py``.
"""

import sys

from cxrdist.launcher import LaunchError, submit_sharding


def main() -> int:
    try:
        out = submit_sharding(sys.argv[1:])
    except (LaunchError, ValueError) as e:
        print(f"shard: {e}\nnothing was submitted", file=sys.stderr)
        return 2
    print(f"array jobs {', '.join(out['array'])} write shard ranges {out['ranges']}")
    print(f"manifest job {out['finalize']} runs after them; output: {out['out']}")
    print(f"then: python shards/verify.py {out['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
