"""The packaged default model: it loads on a fresh install, checked by its sha256, the README's first command
segments the liver of the bundled example CT as well as the card says (the promotion gate measured and recorded
that Dice on the weights that ship), and `models list | info` show its status, numbers and card."""

from __future__ import annotations

import json
from pathlib import Path


from medsam3d import store
from medsam3d.cli import main
from medsam3d.evaluation.metrics import dice
from medsam3d.io import read_volume

REPO = Path(__file__).resolve().parents[2]
README_POINT = "91,52,18"  # the README's first command clicks here (ijk voxel of data/example_ct_sm.nii.gz)

CARD = json.loads((store.PACKAGED / "default.json").read_text())
# the same weights on another CPU: float32 kernels differ in their last bits, which can move a border voxel
CROSS_CPU = 0.005


def test_default_model_ships_and_is_checked():
    card = CARD
    weights = store.PACKAGED / card["file"]
    assert weights.stat().st_size <= 25e6, "the default's weights must stay <= 25 MB"
    resolved = store.default_model()
    assert resolved.sha256 == store.sha256_of(weights) == card["sha256"]
    assert resolved.model == "medsam3d-tiny"


def test_readme_first_command_segments_the_liver(tmp_path, capsys):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"medsam3d segment data/example_ct_sm.nii.gz --point {README_POINT} -o liver.nii.gz" in readme
    out, report = tmp_path / "liver.nii.gz", tmp_path / "run.json"
    code = main(["segment", str(REPO / "data" / "example_ct_sm.nii.gz"), "--point", README_POINT, "-o", str(out),
                 "--report", str(report), "--threads", "2"])
    assert code == 0, capsys.readouterr().err
    mask = read_volume(out).array > 0
    liver = read_volume(REPO / "data" / "example_ct_sm_liver.nii.gz").array > 0
    recorded = CARD["heldout"]["example"]
    assert recorded["point"] == [int(c) for c in README_POINT.split(",")]
    assert dice(mask, liver) >= recorded["dice"] - CROSS_CPU
    info = json.loads(report.read_text())
    assert info["model"] == "medsam3d-tiny" and info["runs"][0]["modality"] == "ct"
    assert info["checkpoint_sha256"] == CARD["sha256"]


def test_models_list_and_info_show_the_default_with_its_card(capsys):
    assert main(["models", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("default "))
    dice_1, dice_5 = CARD["heldout"]["dice"]["1"], CARD["heldout"]["dice"]["5"]
    assert f"{dice_1:.3f} at 1 click, {dice_5:.3f} at 5" in line and CARD["status"] in line
    assert main(["models", "info", "default"]) == 0
    card = capsys.readouterr().out
    assert card.startswith("# Model card") and CARD["sha256"][:16] in card and "Not for" in card
