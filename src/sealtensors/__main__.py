"""``python -m sealtensors``: the same command line as the ``sealtensors`` script."""

import sys

from .cli import main

sys.exit(main())
