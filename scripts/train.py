"""Train the segmenter (`segment train`). With no arguments: synthetic shapes, a 9-minute budget."""

import sys

from segment.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
