"""How well --groups auto finds known groups of images (`segment benchmark grouping`)."""

import sys

from segment.benchmarks.grouping import main

if __name__ == "__main__":
    sys.exit(main())
