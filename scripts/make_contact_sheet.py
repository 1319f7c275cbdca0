"""A picture of synthetic samples per difficulty (`segment contact-sheet`)."""

import sys

from segment.cli.contact_sheet import main

if __name__ == "__main__":
    sys.exit(main())
