"""Train a preference model: `python scripts/train_jax.py --devices gpu` (see --help)."""

import sys

from jaxpref.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
