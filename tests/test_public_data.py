"""The public-data split, the bundled example CT and (when built) the nnU-Net v2 datasets in data/public."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SPLIT = REPO / "configs" / "data" / "public_split.json"
EXAMPLE_CT = REPO / "data" / "example_ct_sm.nii.gz"
EXAMPLE_LIVER = REPO / "data" / "example_ct_sm_liver.nii.gz"
PUBLIC = REPO / "data" / "public"
MANIFEST = PUBLIC / "manifest.json"
LABEL_TYPES = (sitk.sitkUInt8, sitk.sitkUInt16)


def geometry(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def load_split() -> dict:
    return json.loads(SPLIT.read_text())


def test_split_names_heldout_subjects():
    split = load_split()
    heldout = split["heldout"]
    assert isinstance(heldout, list) and heldout and all(isinstance(c, str) and c for c in heldout)
    assert len(set(heldout)) == len(heldout)
    assert {"ts_ct_dicom", "colin27"} <= set(heldout)
    assert isinstance(split["notes"], str) and "ts_ct_sm" in split["notes"]
    subjects = split.get("subjects", {})
    trained_subjects = {s for c, s in subjects.items() if c not in heldout}
    for case in heldout:  # a held-out subject has no case on the training side
        assert subjects.get(case) not in trained_subjects, f"{case}'s subject also has a training case"


def test_bundled_example_ct_and_liver_mask():
    assert EXAMPLE_CT.is_file() and EXAMPLE_LIVER.is_file()
    ct, liver = sitk.ReadImage(str(EXAMPLE_CT)), sitk.ReadImage(str(EXAMPLE_LIVER))
    assert ct.GetDimension() == 3 and min(ct.GetSize()) > 1
    assert geometry(liver) == geometry(ct)  # exactly, not approximately
    assert liver.GetPixelID() == sitk.sitkUInt8
    mask = sitk.GetArrayViewFromImage(liver)
    assert set(np.unique(mask)) == {0, 1}
    volume_ml = mask.sum() * np.prod(liver.GetSpacing()) / 1000.0
    assert 500 <= volume_ml <= 3500, f"liver volume {volume_ml:.0f} ml"


@pytest.fixture(scope="module")
def manifest() -> dict:
    if not MANIFEST.is_file():
        pytest.skip(f"{MANIFEST.relative_to(REPO)} not built (run: bash scripts/fetch_public_data.sh)")
    return json.loads(MANIFEST.read_text())


def test_manifest_cases_and_heldout_flags(manifest):
    heldout = set(load_split()["heldout"])
    ids = [c["case_id"] for c in manifest["cases"]]
    assert len(ids) == len(set(ids))
    assert heldout <= set(ids), f"held-out cases {heldout - set(ids)} missing from the manifest"
    for case in manifest["cases"]:
        assert case["heldout"] == (case["case_id"] in heldout)
        assert {"package", "version", "archive"} <= set(case["source"]) and case["license"]
        assert case["num_labels"] > 0 and len(case["shape"]) == 3 and len(case["spacing"]) == 3


def test_datasets_are_valid_nnunet_v2(manifest):
    folders = sorted(p.name for p in PUBLIC.glob("Dataset*_*") if p.is_dir())
    assert folders == sorted(manifest["datasets"])
    by_case = {c["case_id"]: c for c in manifest["cases"]}
    for name in folders:
        root = PUBLIC / name
        meta = json.loads((root / "dataset.json").read_text())
        assert meta["file_ending"] == ".nii.gz"
        assert meta["channel_names"] in ({"0": "CT"}, {"0": "MR"}), name
        labels = meta["labels"]
        assert labels["background"] == 0
        assert sorted(labels.values()) == list(range(len(labels))), f"{name}: labels not consecutive"
        images = sorted(root.glob("imagesTr/*.nii.gz"))
        assert all(p.name.endswith("_0000.nii.gz") for p in images), f"{name}: only one channel expected"
        cases = [p.name[: -len("_0000.nii.gz")] for p in images]
        assert meta["numTraining"] == len(cases) > 0
        assert sorted(p.name for p in root.glob("labelsTr/*.nii.gz")) == sorted(f"{c}.nii.gz" for c in cases)
        for case, image_path in zip(cases, images):
            assert by_case[case]["dataset"] == name
            image = header(image_path)
            label = sitk.ReadImage(str(root / "labelsTr" / f"{case}.nii.gz"))
            assert image.GetDimension() == 3
            assert geometry(label) == geometry(image), f"{name}/{case}: label grid differs from the image's"
            assert list(image.GetSize()) == by_case[case]["shape"]
            assert label.GetPixelID() in LABEL_TYPES, f"{name}/{case}: {label.GetPixelIDTypeAsString()}"
            values = set(np.unique(sitk.GetArrayViewFromImage(label)).tolist()) - {0}
            assert values and values <= set(labels.values()), f"{name}/{case}: unknown label values"
            assert len(values) == by_case[case]["num_labels"]
