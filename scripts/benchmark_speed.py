"""Training and prediction speed against stock Keras (`segment benchmark speed`)."""

import sys

from segment.benchmarks.speed import main

if __name__ == "__main__":
    sys.exit(main())
