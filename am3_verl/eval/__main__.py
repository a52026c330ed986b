"""``python -m am3_verl.eval``: see :mod:`am3_verl.eval.cli`."""

import sys

from am3_verl.eval.cli import main

sys.exit(main())
