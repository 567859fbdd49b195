"""Write a Kaggle submission: `python scripts/infer.py --run-dir runs/NAME` (see --help)."""

import sys

from jaxpref.cli import infer_main

if __name__ == "__main__":
    sys.exit(infer_main())
