"""K-fold cross-validation grouped by prompt: `python scripts/cross_validate.py --folds 5`."""

import sys

from jaxpref.cli import crossval_main

if __name__ == "__main__":
    sys.exit(crossval_main())
