"""The demo: phantom → shards → verify → chexnet on 2 local ranks → evaluation → report (``make demo``).

``python launch/demo.py --out runs/demo`` (same as ``python -m cxrdist.run.demo``); see ``--help``.
"""

import sys

from cxrdist.run.demo import main

if __name__ == "__main__":
    sys.exit(main())
