"""Serve a trained model: a local web page and HTTP API (`segment serve`)."""

import sys

from segment.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
