"""Training data (training.data): cached preprocessing in model space, held-out cases, and bad image/label pairs
skipped with one warning (fixture toy: tests/conftest.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from medsam3d.training.data import preprocess, structures


def test_a_held_out_case_that_is_not_there_is_an_error_not_trained_on(toy, tmp_path):
    _, records = preprocess([toy], tmp_path / "cache", holdout=["toy_001"], log=lambda m: None)
    assert [r["case_id"] for r in records] == ["toy_000", "toy_002"]
    with pytest.raises(ValueError, match="held-out case.s. toy_01 not found in the data roots"):
        preprocess([toy], tmp_path / "cache", holdout=["toy_01"], log=lambda m: None)


def test_bad_pairs_are_skipped_with_one_warning_listing_them(toy, tmp_path):
    data = tmp_path / "Dataset002_Bad"
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir(parents=True)
    (data / "dataset.json").write_text((toy / "dataset.json").read_text())
    good_img, good_lab = toy / "imagesTr" / "toy_000_0000.nii.gz", toy / "labelsTr" / "toy_000.nii.gz"
    (data / "imagesTr" / "good_0000.nii.gz").write_bytes(good_img.read_bytes())
    (data / "labelsTr" / "good.nii.gz").write_bytes(good_lab.read_bytes())
    (data / "imagesTr" / "nolabel_0000.nii.gz").write_bytes(good_img.read_bytes())
    (data / "imagesTr" / "shifted_0000.nii.gz").write_bytes(good_img.read_bytes())
    shifted = sitk.ReadImage(str(good_lab))
    shifted.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(data / "labelsTr" / "shifted.nii.gz"))
    (data / "imagesTr" / "empty_0000.nii.gz").write_bytes(good_img.read_bytes())
    empty = sitk.ReadImage(str(good_lab)) * 0
    sitk.WriteImage(empty, str(data / "labelsTr" / "empty.nii.gz"))
    sitk.WriteImage(sitk.Image([8, 8, 8, 2], sitk.sitkInt16), str(data / "imagesTr" / "fourd_0000.nii.gz"))
    sitk.WriteImage(sitk.Image([8, 8, 8, 2], sitk.sitkUInt8), str(data / "labelsTr" / "fourd.nii.gz"))
    with pytest.warns(UserWarning) as caught:
        folder, records = preprocess([data], tmp_path / "cache", log=lambda m: None)
    message = str(caught[0].message)
    assert message.startswith("skipped 4 case(s)")
    for reason in ("nolabel (missing label)", "shifted (image and label geometry differ)",
                   "empty (empty label map)", "fourd (not a 3D scalar image)"):
        assert reason in message
    assert [r["case_id"] for r in records] == ["good"]
    only_bad = tmp_path / "Dataset003_OnlyBad"
    (only_bad / "imagesTr").mkdir(parents=True)
    (only_bad / "labelsTr").mkdir()
    (only_bad / "dataset.json").write_text((toy / "dataset.json").read_text())
    (only_bad / "imagesTr" / "nolabel_0000.nii.gz").write_bytes(good_img.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no usable image/label pair"):
            preprocess([only_bad], tmp_path / "cache2", log=lambda m: None)


def test_preprocessing_is_cached_and_in_model_space(toy, tmp_path):
    folder, records = preprocess([toy], tmp_path / "cache", spacing=1.5, log=lambda m: None)
    mtimes = {p: p.stat().st_mtime_ns for p in folder.glob("*.npz")}
    again_folder, again = preprocess([toy], tmp_path / "cache", spacing=1.5, log=lambda m: None)
    assert again_folder == folder and again == records
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*.npz")} == mtimes  # nothing redone
    other, _ = preprocess([toy], tmp_path / "cache", spacing=3.0, log=lambda m: None)
    assert other != folder  # settings are part of the fingerprint
    # toy scans are 64 x 64 x 48 voxels of 2.5 x 2.5 x 3 mm: 1.5 mm isotropic RAS+ grid of ~106 x 106 x 95
    data = np.load(folder / records[0]["file"])
    assert data["image"].shape == tuple(records[0]["shape"]) and abs(data["image"].shape[0] - 106) <= 2
    # the toy image's index axes are LPS-aligned, model space is RAS+: the first two axes are flipped
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(toy / "labelsTr" / "toy_000.nii.gz"))).transpose(2, 1, 0)
    com_original = np.argwhere(original == 1).mean(0) / np.array(original.shape)
    com_model = np.argwhere(data["label"] == 1).mean(0) / np.array(data["label"].shape)
    assert np.allclose(com_model[:2], 1 - com_original[:2], atol=0.03) and np.isclose(com_model[2], com_original[2],
                                                                                        atol=0.03)
    targets = structures(records, folder, None, 20)
    assert {t.value for t in targets} == {1, 2, 3}
    assert {t.value for t in structures(records, folder, [2], 20)} == {2}
