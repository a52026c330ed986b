"""Thin command line over :mod:`am3_verl.data.intersafe_v`; ``--help`` lists every flag (docs/data.md explains them)."""

import sys

from am3_verl.data.cli import run_command
from am3_verl.data.intersafe_v import main

if __name__ == "__main__":
    sys.exit(run_command(main))
