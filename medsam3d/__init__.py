"""medsam3d: promptable 3D segmentation of CT and MRI."""

__version__ = "0.1.0"

from .errors import InputError  # noqa: E402

__all__ = ["InputError", "Segmenter", "Volume", "read_volume", "write_volume", "__version__"]


def __getattr__(name: str):
    """Heavy pieces (torch, SimpleITK) load on first use, so `medsam3d --version` stays instant."""
    if name == "Segmenter":
        from .segmenter import Segmenter

        return Segmenter
    if name in ("Volume", "read_volume", "write_volume"):
        from . import io

        return getattr(io, name)
    raise AttributeError(f"module 'medsam3d' has no attribute {name!r}")
