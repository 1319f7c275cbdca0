"""Mask-quality report: a model and classical baselines on image/mask pairs (`segment evaluate`)."""

import sys

from segment.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
