"""Clicks to a good mask, with a simulated annotator (`segment benchmark interactive`)."""

import sys

from segment.benchmarks.interactive import main

if __name__ == "__main__":
    sys.exit(main())
