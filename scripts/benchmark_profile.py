"""Where a training step's time goes (`segment benchmark profile`)."""

import sys

from segment.benchmarks.profile import main

if __name__ == "__main__":
    sys.exit(main())
