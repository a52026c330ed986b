"""``python -m am3_verl.miniature``: see :mod:`am3_verl.miniature.experiment`."""

import sys

from am3_verl.miniature.experiment import main

sys.exit(main())
