"""Write WebDataset shards from an NIH ChestX-ray14 root (real or phantom). See ``--help``."""

import sys

from cxrdist.data.shard_cli import write_main

if __name__ == "__main__":
    sys.exit(write_main())
