"""Masks under noise, blur and low contrast (`segment benchmark robustness`)."""

import sys

from segment.benchmarks.robustness import main

if __name__ == "__main__":
    sys.exit(main())
