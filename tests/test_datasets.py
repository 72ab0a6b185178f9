"""Dataset folders on disk (medsam3d.datasets): nnU-Net v2 and Medical Segmentation Decathlon layouts (fixture toy:
tests/conftest.py)."""

from __future__ import annotations

import json

from medsam3d.datasets import discover


def test_discover_nnunet_and_decathlon(toy, tmp_path):
    cases = discover(toy)
    assert [c.case_id for c in cases] == ["toy_000", "toy_001", "toy_002"] and cases[0].modality == "CT"
    msd = tmp_path / "Task02_Heart"
    (msd / "imagesTr").mkdir(parents=True)
    (msd / "labelsTr").mkdir()
    for name in ("la_003", "la_004"):
        (msd / "imagesTr" / f"{name}.nii.gz").write_bytes((toy / "imagesTr" / "toy_000_0000.nii.gz").read_bytes())
        (msd / "labelsTr" / f"{name}.nii.gz").write_bytes((toy / "labelsTr" / "toy_000.nii.gz").read_bytes())
    (msd / "dataset.json").write_text(json.dumps({
        "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "left atrium"},
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in ("la_003", "la_004")],
    }))
    assert [(c.case_id, c.modality) for c in discover(msd)] == [("la_003", "MRI"), ("la_004", "MRI")]
