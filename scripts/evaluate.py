"""Score a run against baselines: `python scripts/evaluate.py --run-dir runs/NAME` (see --help)."""

import sys

from jaxpref.cli import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
