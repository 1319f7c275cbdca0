"""The HTTP API under concurrent requests (`segment benchmark serving`)."""

import sys

from segment.benchmarks.serving import main

if __name__ == "__main__":
    sys.exit(main())
