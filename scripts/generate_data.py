"""Write a synthetic shape dataset (`segment generate`)."""

import sys

from segment.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
