"""``python -m medsam3d`` is ``medsam3d``."""

import sys

from .cli import main

sys.exit(main())
