"""Every loss on the same network, data and steps (`segment benchmark losses`)."""

import sys

from segment.benchmarks.losses import main

if __name__ == "__main__":
    sys.exit(main())
