"""Generate the phantom ChestX-ray14: ``python launch/make_phantom.py --out P --num-images 2000 --size 256``."""

import sys

from cxrdist.phantom.cli import main

if __name__ == "__main__":
    sys.exit(main())
