"""Thin command line over :mod:`am3_verl.builder.pipeline`; ``--help`` lists every flag (docs/builder.md explains them)."""

import sys

from am3_verl.builder.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
