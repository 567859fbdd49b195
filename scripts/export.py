"""Write an inference bundle: `python scripts/export.py --run-dir RUN --out DIR` (see --help)."""

import sys

from jaxpref.cli import command_parser, run_with_environment

if __name__ == "__main__":
    sys.exit(run_with_environment(command_parser("export").parse_args(), "export"))
