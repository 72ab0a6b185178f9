"""medsam3d: promptable 3D segmentation of CT and MRI."""

__version__ = "0.1.0"

from .errors import InputError  # noqa: E402

__all__ = ["InputError", "__version__"]
