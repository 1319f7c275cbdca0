"""Masks from COCO or LabelMe polygon exports (`segment import-masks`)."""

import sys

from segment.cli.import_masks import main

if __name__ == "__main__":
    sys.exit(main())
