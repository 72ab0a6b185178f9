"""The 3D Slicer module's logic outside Slicer: Slicer's API replaced by small fakes (tests/fakes/slicer_api.py),
the worker it starts the real `medsam3d serve --stdio`.
"""

from __future__ import annotations

import ast
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from medsam3d.io import Volume

from fakes import slicer_api
from helpers import EXAMPLE_CT as SCAN, click_sequences

MODULE_DIR = slicer_api.MODULE.parent


@pytest.fixture(scope="module")
def module():
    saved = {name: sys.modules.get(name) for name in ("slicer", "slicer.util", "slicer.ScriptedLoadableModule",
                                                      "qt", "vtk", "ctk")}
    yield slicer_api.load_module()
    for name, value in saved.items():
        if value is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = value


def test_module_never_imports_torch_or_medsam3d():
    tree = ast.parse(slicer_api.MODULE.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"torch", "medsam3d", "SimpleITK", "monai"}, imported


def test_extension_layout():
    root = MODULE_DIR.parent
    assert "project(MedSAM3D)" in (root / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in (MODULE_DIR / "CMakeLists.txt").read_text()
    ui = (MODULE_DIR / "Resources" / "UI" / "MedSAM3D.ui").read_text()
    for widget in ("volumeSelector", "segmentationSelector", "segmentSelector", "placeWidget", "negativeCheckBox",
                   "undoButton", "resetButton", "newSegmentButton", "executablePathLineEdit", "logText",
                   "statusLabel"):
        assert f'name="{widget}"' in ui, widget
    assert (MODULE_DIR / "Resources" / "Icons" / "MedSAM3D.png").stat().st_size > 100


def test_two_objects_through_the_real_worker(module, tmp_path):
    """The module's own scenario (run_scenario, which its Slicer self-test also runs): clicks in RAS from
    Markups become the worker's masks, patched box by box into each segment's array."""
    image = sitk.ReadImage(str(SCAN))
    volume = Volume.from_sitk(image)
    volume_node, segmentation_node = slicer_api.VolumeNode(image), slicer_api.SegmentationNode()
    sequences = click_sequences(12)
    objects = {name: [(volume.ijk_to_ras(np.array(p)).tolist(), positive) for p, positive in clicks]
               for name, clicks in sequences.items()}
    logic = module.MedSAM3DLogic()
    states = []
    logic.on_state = states.append
    executable = tmp_path / "medsam3d"  # the user's own medsam3d: here, this Python's
    executable.write_text(f"#!/bin/sh\nexec {sys.executable} -m medsam3d \"$@\"\n")
    executable.chmod(0o755)
    logic.start_worker(executable=str(executable), threads=2)
    try:
        masks = module.run_scenario(logic, volume_node, segmentation_node, objects)
        assert states[-1].startswith("ready: scan 122x101x30, CT"), states
        assert logic.hello["protocol"] == module.PROTOCOL_VERSION and logic.hello["incremental"] is True
        # the segments hold what the worker holds, on the scan's (K, J, I) grid
        for (segment_id, mask), name in zip(masks.items(), objects):
            path = tmp_path / f"{name}.nii.gz"
            reply = logic.client.request("get_mask", session=logic.session, object=segment_id, path=str(path))
            served = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
            assert reply["voxels"] > 100
            np.testing.assert_array_equal(mask, served)
            np.testing.assert_array_equal(segmentation_node.arrays[segment_id], served)
        assert len(logic.click_times) == 12
        # undo goes back one click on that segment only
        liver_id, spleen_id = masks
        before = segmentation_node.arrays[spleen_id].copy()
        logic.undo(segmentation_node, liver_id)
        logic.wait_idle()
        assert not np.array_equal(segmentation_node.arrays[liver_id], masks[liver_id])
        np.testing.assert_array_equal(segmentation_node.arrays[spleen_id], before)
        # a click outside the scan is an error in the status line, not a crash
        logic.add_click(segmentation_node, liver_id, [5000.0, 0.0, 0.0], True)
        logic.wait_idle()
        assert "outside the image" in logic.state and logic.client.running
    finally:
        logic.stop_worker()
    assert logic.state == "not started"

