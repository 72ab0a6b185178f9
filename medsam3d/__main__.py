"""``python -m medsam3d`` is ``medsam3d``."""

from .cli import run

run()
