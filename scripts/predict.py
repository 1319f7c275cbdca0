"""Segment your own images with a trained model (`segment predict`)."""

import sys

from segment.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
