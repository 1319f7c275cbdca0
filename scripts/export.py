"""Export a trained segmenter for deployment (`segment export`)."""

import sys

from segment.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
