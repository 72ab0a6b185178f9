"""Small stand-ins for Slicer's own Python API (``slicer``, ``vtk``, ``qt``, ``ctk``): just what the MedSAM3D
module's logic calls, so the logic can be imported and driven outside Slicer against the real worker.

Volume nodes wrap a SimpleITK image; ``slicer.util.saveNode`` writes it as Slicer would (geometry included);
``updateSegmentBinaryLabelmapFromArray`` records the (K, J, I) array a segment receives.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import SimpleITK as sitk

MODULE = Path(__file__).resolve().parents[2] / "slicer" / "MedSAM3D" / "MedSAM3D" / "MedSAM3D.py"


class VolumeNode:
    def __init__(self, image: sitk.Image, name: str = "scan") -> None:
        self.image, self.name = image, name

    def GetName(self) -> str:
        return self.name

    def GetParentTransformNode(self):
        return None


class Segmentation:
    def __init__(self) -> None:
        self.segments: dict[str, str] = {}

    def AddEmptySegment(self, name: str = "") -> str:
        segment_id = f"Segment_{len(self.segments) + 1}"
        self.segments[segment_id] = name or segment_id
        return segment_id

    def GetNumberOfSegments(self) -> int:
        return len(self.segments)


class SegmentationNode:
    def __init__(self) -> None:
        self.segmentation = Segmentation()
        self.arrays: dict[str, np.ndarray] = {}  # segment id -> (K, J, I) uint8, as Slicer would store it
        self.updates = 0

    def GetSegmentation(self) -> Segmentation:
        return self.segmentation


def _save_node(node: VolumeNode, path: str) -> bool:
    sitk.WriteImage(node.image, path, useCompression=False)
    return True


def _update_segment(array: np.ndarray, segmentation_node: SegmentationNode, segment_id: str, reference) -> None:
    assert array.dtype == np.uint8 and array.shape == reference.image.GetSize()[::-1]
    segmentation_node.arrays[segment_id] = array.copy()
    segmentation_node.updates += 1


class _Settings:
    store: dict = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value) -> None:
        self.store[key] = value


class _Base:
    def __init__(self, *args, **kwargs) -> None:
        pass


def install() -> None:
    """Put the fakes in ``sys.modules`` (only where no real Slicer is present)."""
    slicer = types.ModuleType("slicer")
    slicer.util = types.ModuleType("slicer.util")
    slicer.util.saveNode = _save_node
    slicer.util.updateSegmentBinaryLabelmapFromArray = _update_segment
    slicer.util.VTKObservationMixin = type("VTKObservationMixin", (_Base,), {})
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):
        setattr(scripted, name, type(name, (_Base,), {}))
    slicer.ScriptedLoadableModule = scripted
    qt = types.ModuleType("qt")
    qt.QSettings = _Settings
    vtk = types.ModuleType("vtk")
    ctk = types.ModuleType("ctk")
    sys.modules.update({"slicer": slicer, "slicer.util": slicer.util, "slicer.ScriptedLoadableModule": scripted,
                        "qt": qt, "vtk": vtk, "ctk": ctk})


def load_module():
    """Import slicer/MedSAM3D/MedSAM3D/MedSAM3D.py with the fakes in place -> the module."""
    install()
    spec = importlib.util.spec_from_file_location("MedSAM3D", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
