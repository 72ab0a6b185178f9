"""The local model store: which weights ``--model NAME`` means, and the default model shipped in the package.

This first part only resolves the packaged default. The store under ``$MEDSAM3D_HOME`` (list / info / import /
pull with checksums) extends it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError

PACKAGED = Path(__file__).parent / "weights"


def default_model() -> tuple[str, Path]:
    """(model name, checkpoint path) of the default model that ships inside the package."""
    card = PACKAGED / "default.json"
    if not card.is_file():
        raise InputError("no trained default model ships with this version of medsam3d yet; pass --model NAME "
                         "--checkpoint PATH (for example SAM-Med3D-turbo's weights)")
    info = json.loads(card.read_text())
    return info["model"], PACKAGED / info["file"]
