"""Verify a shard root: checksums, counts, every image decoded. Usage: ``python launch/verify_shards.py S``."""

import sys

from cxrdist.data.shard_cli import verify_main

if __name__ == "__main__":
    sys.exit(verify_main())
