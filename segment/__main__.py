"""`python -m segment JOB ...`: the `segment` command (`segment.cli`)."""

import sys

from segment.cli import main

sys.exit(main())
