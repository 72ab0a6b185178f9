"""The packaged default model: it loads on a fresh install, checked by its sha256, and the README's first command
segments the liver of the bundled example CT (Dice >= 0.85 against its label)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsam3d import store
from medsam3d.cli import main
from medsam3d.evaluation.metrics import dice
from medsam3d.io import read_volume

REPO = Path(__file__).resolve().parents[1]
README_POINT = "91,52,18"  # the README's first command clicks here (ijk voxel of data/example_ct_sm.nii.gz)

# Until a trained default meets issue 5's bar these tests have nothing to check; the day default.json lands they
# run, and a default that cannot segment the README's liver fails them.
pytestmark = pytest.mark.skipif(not (store.PACKAGED / "default.json").is_file(),
                                reason="no trained default model ships yet (issue 5)")


def test_default_model_ships_and_is_checked():
    card = json.loads((store.PACKAGED / "default.json").read_text())
    weights = store.PACKAGED / card["file"]
    assert weights.stat().st_size <= 25e6, "the default's weights must stay <= 25 MB"
    resolved = store.default_model()
    assert resolved.sha256 == store.sha256_of(weights) == card["sha256"]
    assert resolved.model == "medsam3d-tiny"


def test_readme_first_command_segments_the_liver(tmp_path, capsys):
    readme = (REPO / "README.md").read_text()
    assert f"medsam3d segment data/example_ct_sm.nii.gz --point {README_POINT} -o liver.nii.gz" in readme
    out, report = tmp_path / "liver.nii.gz", tmp_path / "run.json"
    code = main(["segment", str(REPO / "data" / "example_ct_sm.nii.gz"), "--point", README_POINT, "-o", str(out),
                 "--report", str(report), "--threads", "2"])
    assert code == 0, capsys.readouterr().err
    mask = read_volume(out).array > 0
    liver = read_volume(REPO / "data" / "example_ct_sm_liver.nii.gz").array > 0
    assert dice(mask, liver) >= 0.85
    info = json.loads(report.read_text())
    assert info["model"] == "medsam3d-tiny" and info["runs"][0]["modality"] == "ct"
