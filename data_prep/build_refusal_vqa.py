"""Thin command line over :mod:`am3_verl.builder.refusal_vqa`; ``--help`` lists every flag (docs/builder.md explains them)."""

import sys

from am3_verl.builder.refusal_vqa import main

if __name__ == "__main__":
    sys.exit(main())
