"""Write WebDataset shards from an NIH ChestX-ray14 root (real or phantom): here, or as an array job.

``python launch/write_shards.py --nih-root R --out S --size 512 --workers 16`` writes here;
``... --array 16`` submits 16 Slurm array tasks (one range of shards each) and a manifest job after them.
See ``--help``.
"""

import sys

from cxrdist.run.shards import main

if __name__ == "__main__":
    sys.exit(main())
