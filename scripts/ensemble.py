"""Blend models' out-of-fold predictions: `python scripts/ensemble.py A/oof.csv B/oof.csv`."""

import sys

from jaxpref.cli import main

if __name__ == "__main__":
    sys.exit(main(["ensemble", *sys.argv[1:]]))
