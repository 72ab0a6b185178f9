"""Objects longer than two model windows: clicks at both ends, in `segment` and through the click protocol, give
one mask and never a refusal."""

from __future__ import annotations

import numpy as np
import pytest

import medsam3d.segmenter as segmenter_module
from medsam3d.cli import main
from medsam3d.evaluation.evaluate import run_protocol
from medsam3d.evaluation.methods import ModelMethod
from medsam3d.io import Volume, read_volume, write_volume
from medsam3d.segmenter import Segmenter

from helpers import ThresholdModel, dice

WINDOW = 64  # the stand-in's window: 64 voxels of 1.5 mm = 96 mm
ENDS = ((20, 20, 14), (20, 20, 385))  # ijk, 371 voxels = 556 mm apart: more than five windows


def long_rod() -> tuple[Volume, np.ndarray]:
    """A bright rod 570 mm long (k 10..389) on a dim background, 1.5 mm voxels -> (volume, true mask)."""
    shape = (40, 40, 400)
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    rod = ((i - 20) ** 2 + (j - 20) ** 2 <= 36) & (k >= 10) & (k < 390)
    array = np.where(rod, 200, 0).astype(np.int16)
    return Volume(array, np.array([1.5, 1.5, 1.5]), np.zeros(3), np.eye(3)), rod


def test_clicks_at_both_ends_of_a_long_rod_give_one_mask_holding_both():
    volume, rod = long_rod()
    seg = Segmenter(model=ThresholdModel(WINDOW), max_windows=2)
    seg.set_volume(volume)
    result = seg.predict(points=list(ENDS))  # used to fail: "no prompt falls inside the model window"
    mask = result.mask.array > 0
    assert all(mask[p] for p in ENDS)
    assert len(result.windows) == 2 and not (mask & ~rod).any()
    # a refinement with a click far along the rod from both: answered in a window around it, the ends kept
    middle = (20, 20, 200)
    refined = seg.predict(points=list(ENDS) + [middle], refine=True).mask.array > 0
    assert refined[middle] and all(refined[p] for p in ENDS)


def test_segment_command_takes_clicks_at_both_ends(tmp_path, monkeypatch, capsys):
    volume, rod = long_rod()
    scan = write_volume(volume, tmp_path / "rod.nii.gz")
    monkeypatch.setattr(segmenter_module, "load_model", lambda *a, **k: (ThresholdModel(WINDOW), None))
    out = tmp_path / "mask.nii.gz"
    code = main(["segment", str(scan), "--point", ",".join(map(str, ENDS[0])), "--point",
                 ",".join(map(str, ENDS[1])), "-o", str(out), "--max-windows", "2", "-q"])
    assert code == 0, capsys.readouterr().err
    mask = read_volume(out).array > 0
    assert all(mask[p] for p in ENDS) and not (mask & ~rod).any()


@pytest.mark.parametrize("max_windows", [1, 2])
def test_the_protocol_follows_a_long_structure_without_aborting(max_windows):
    """The protocol's corrective clicks land all along the rod, windows apart; every one is answered and the
    mask only grows (one window's worth per click at most)."""
    volume, rod = long_rod()
    method = ModelMethod(Segmenter(model=ThresholdModel(WINDOW), max_windows=max_windows), "stand-in")
    method.reset(volume)
    scores = run_protocol(method, rod, volume.spacing, clicks=[1, 3, 5, 10], tolerance_mm=2.0)["dice"]
    values = [scores[str(k)] for k in (1, 3, 5, 10)]
    assert values == sorted(values) and values[-1] > values[0] + 0.3
    assert dice(method.last_result.mask.array, rod) == pytest.approx(values[-1])
