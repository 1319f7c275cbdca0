"""Our recipe against a plain Keras U-Net on photographs (`segment benchmark real`)."""

import sys

from segment.benchmarks.real import main

if __name__ == "__main__":
    sys.exit(main())
