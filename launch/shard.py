"""Shard the NIH release as a Slurm array: ``python launch/shard.py --nih-root R --out S --array 16``.

Each array task writes one range of shards (resumable: rerun the same command after a failure); a job that
depends on the array writes the manifests. Writer flags are those of ``shards/write.py``. Mistakes are one line
on stderr and exit status 2, before anything is created or submitted.
"""

import sys

from cxrdist import cli
from cxrdist.launcher import submit_sharding


def main(argv: list[str] | None = None) -> int:
    """Submit the array and the manifest job."""
    try:
        out = submit_sharding(sys.argv[1:] if argv is None else argv)
    except cli.USAGE_ERRORS as e:
        return cli.usage_exit("shard.py", e)
    print(f"array jobs {', '.join(out['array'])} write shard ranges {out['ranges']}")
    print(f"manifest job {out['finalize']} runs after them; output: {out['out']}")
    print(f"then: python shards/verify.py {out['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
