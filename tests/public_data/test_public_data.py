"""The public-data split, the bundled example CT and (when built) the nnU-Net v2 datasets in data/public. (The
preparation's readers, on synthetic files: test_cases.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

REPO = Path(__file__).resolve().parents[2]
SPLIT = REPO / "configs" / "data" / "public_split.json"
EXAMPLE_CT = REPO / "data" / "example_ct_sm.nii.gz"
EXAMPLE_LIVER = REPO / "data" / "example_ct_sm_liver.nii.gz"
PUBLIC = REPO / "data" / "public"
MANIFEST = PUBLIC / "manifest.json"
TRAIN_CONFIG = REPO / "configs" / "default" / "train.yaml"
LABEL_TYPES = (sitk.sitkUInt8, sitk.sitkUInt16)
DATASETS = ["Dataset201_TotalSegCT", "Dataset202_TotalSegMR", "Dataset203_BrainMR", "Dataset204_LesionCT",
            "Dataset205_LesionMR", "Dataset206_ChestCT", "Dataset207_SpineCT", "Dataset208_SpineMR",
            "Dataset209_HeadMR"]
# pyradiomics' lesion cases: dataset, case, lesion volume range (ml), as documented in data/README.md
LESIONS = [("Dataset204_LesionCT", "lung1", 1.0, 2.0), ("Dataset204_LesionCT", "lung2", 40.0, 60.0),
           ("Dataset205_LesionMR", "brain1", 12.0, 20.0), ("Dataset205_LesionMR", "brain2", 1.2, 2.5)]
CHEST_LABELS = {"background": 0, "ribs": 1, "cervical_vertebral_column": 2, "thoracic_vertebral_column": 3,
                "lumbar_vertebral_column": 4, "right_lung": 5, "left_lung": 6}


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
    assert {"ts_ct_dicom", "colin27", "lung1", "brain1", "brain2", "tptbox_ct"} <= set(heldout)
    assert isinstance(split["notes"], str) and "ts_ct_sm" in split["notes"]
    subjects = split.get("subjects", {})
    assert set(heldout) <= set(subjects), "every held-out case names its subject"
    trained_subjects = {s for c, s in subjects.items() if c not in heldout}
    for case in heldout:  # a held-out subject has no case on the training side
        assert subjects.get(case) not in trained_subjects, f"{case}'s subject also has a training case"
    # brain1 and brain2 may be one patient: one subject, so the check above keeps both out of training
    assert subjects["brain1"] == subjects["brain2"]
    assert len({subjects[c] for c in ["lung1", "lung2", "brain1", "slicer_ctchest4"]}) == 4
    assert {"lung2", "slicer_ctchest4"}.isdisjoint(heldout)  # a lung lesion and the chest CT train
    assert subjects["tptbox_ct"] != subjects["tptbox_mr"] and "tptbox_mr" not in heldout
    assert {"invesalius_head_ct", "pydeface_mean_head", "robex_atlas"}.isdisjoint(heldout)


def test_default_train_config_uses_every_dataset_and_the_split():
    data = yaml.safe_load(TRAIN_CONFIG.read_text())["data"]
    assert [Path(r).name for r in data["roots"]] == DATASETS
    assert all(Path(r).parent.name == "public" for r in data["roots"])
    assert sorted(data["holdout"]) == sorted(load_split()["heldout"])


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


def built(name: str) -> Path:
    """data/public/NAME, or a skip when it has not been built."""
    root = PUBLIC / name
    if not (root / "dataset.json").is_file():
        pytest.skip(f"{root.relative_to(REPO)} not built (run: bash scripts/fetch_public_data.sh)")
    return root


def test_manifest_cases_and_heldout_flags(manifest):
    heldout = set(load_split()["heldout"])
    ids = [c["case_id"] for c in manifest["cases"] + manifest.get("unlabelled", [])]
    assert len(ids) == len(set(ids))
    assert heldout <= set(ids), f"held-out cases {heldout - set(ids)} missing from the manifest"
    assert manifest["datasets"] == DATASETS, "stale build: run bash scripts/fetch_public_data.sh again"
    subjects = load_split()["subjects"]
    assert sorted(subjects) == sorted(ids), "the split's subjects must name every built case, and only those"
    for case in manifest["cases"]:
        assert case["subject"] == subjects[case["case_id"]]
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


@pytest.mark.parametrize("dataset,case,low_ml,high_ml", LESIONS)
def test_lesion_cases(dataset, case, low_ml, high_ml):
    root = built(dataset)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "lesion": 1}
    assert meta["channel_names"] == {"0": "CT" if dataset.endswith("CT") else "MR"}
    image = sitk.ReadImage(str(root / "imagesTr" / f"{case}_0000.nii.gz"))
    label = sitk.ReadImage(str(root / "labelsTr" / f"{case}.nii.gz"))
    assert geometry(label) == geometry(image) and label.GetPixelID() == sitk.sitkUInt8
    mask = sitk.GetArrayViewFromImage(label)
    assert set(np.unique(mask).tolist()) == {0, 1}
    volume_ml = np.count_nonzero(mask) * np.prod(label.GetSpacing()) / 1000.0
    assert low_ml <= volume_ml <= high_ml, f"{case}: lesion {volume_ml:.2f} ml"
    if dataset.endswith("CT"):  # a lung lesion is soft tissue, not air: image and mask line up
        assert sitk.GetArrayViewFromImage(image)[mask > 0].mean() > -400


def test_chest_ct_segments():
    root = built("Dataset206_ChestCT")
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == CHEST_LABELS  # named from the Slicer segments, body outline ("tissue") left out
    image = sitk.ReadImage(str(root / "imagesTr" / "slicer_ctchest4_0000.nii.gz"))
    label = sitk.ReadImage(str(root / "labelsTr" / "slicer_ctchest4.nii.gz"))
    assert geometry(label) == geometry(image)
    assert image.GetSize() == (128, 128, 34)
    np.testing.assert_allclose(image.GetSpacing(), (3.046876, 3.046876, 10.0), atol=1e-5)
    hu, lab = sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(label)
    voxel_ml = np.prod(label.GetSpacing()) / 1000.0
    centre_x = {}
    for name, value in CHEST_LABELS.items():
        if value == 0:
            continue
        mask = lab == value
        volume_ml = np.count_nonzero(mask) * voxel_ml
        assert volume_ml > 50, f"{name}: {volume_ml:.0f} ml"
        if name.endswith("lung"):
            assert 1000 < volume_ml < 6000 and hu[mask].mean() < -500, name
        else:  # ribs and spine: bone
            assert hu[mask].mean() > 150, name
        centre_x[name] = image.TransformContinuousIndexToPhysicalPoint(
            [float(c) for c in np.argwhere(mask).mean(0)[::-1]])[0]
    assert centre_x["right_lung"] < centre_x["left_lung"]  # LPS: the patient's right is -x
    body = hu > -300  # with the body-outline segment kept, labels would cover nearly all of it (98%; 9% without)
    assert np.count_nonzero(body & (lab > 0)) < 0.3 * np.count_nonzero(body), "a body-outline segment was kept"


SPINE = {"Dataset207_SpineCT": ("tptbox_ct", "CT", {"vertebrae_L2", "vertebrae_L3", "vertebrae_L4"}),
         "Dataset208_SpineMR": ("tptbox_mr", "MR", {"vertebrae_C5", "vertebrae_C6", "vertebrae_C7",
                                                    "intervertebral_disc_C5_C6", "intervertebral_disc_C6_C7",
                                                    "spinal_cord", "spinal_canal_csf"})}


@pytest.mark.parametrize("dataset", sorted(SPINE))
def test_spine_cases(dataset):
    case, modality, names = SPINE[dataset]
    root = built(dataset)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": modality} and set(meta["labels"]) - {"background"} == names
    assert meta["heldout_cases"] == (["tptbox_ct"] if modality == "CT" else [])
    image = sitk.ReadImage(str(root / "imagesTr" / f"{case}_0000.nii.gz"))
    label = sitk.ReadImage(str(root / "labelsTr" / f"{case}.nii.gz"))
    assert geometry(label) == geometry(image) and image.GetSpacing() == (1.5, 1.5, 1.5)
    values, lab = sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(label)
    for name, value in meta["labels"].items():
        if value:
            assert np.count_nonzero(lab == value) > 300, name
    if modality == "CT":  # vertebrae are bone
        assert all(values[lab == v].mean() > 150 for v in meta["labels"].values() if v)
    else:  # T2w: CSF around the cord is brighter than the discs and the vertebrae
        csf = values[lab == meta["labels"]["spinal_canal_csf"]].mean()
        assert csf > 2 * values[lab == meta["labels"]["vertebrae_C6"]].mean()


def test_head_mr_brain_mask():
    root = built("Dataset209_HeadMR")
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "brain": 1} and meta["channel_names"] == {"0": "MR"}
    image = sitk.ReadImage(str(root / "imagesTr" / "robex_atlas_0000.nii.gz"))
    label = sitk.ReadImage(str(root / "labelsTr" / "robex_atlas.nii.gz"))
    assert geometry(label) == geometry(image)
    brain_ml = np.count_nonzero(sitk.GetArrayViewFromImage(label)) * np.prod(label.GetSpacing()) / 1000
    assert 1000 < brain_ml < 1800, f"brain {brain_ml:.0f} ml"


def test_unlabelled_images(manifest):
    root = PUBLIC / "Unlabelled"
    meta = json.loads((root / "dataset.json").read_text())
    entries = {e["case_id"]: e for e in manifest["unlabelled"]}
    assert meta["labels"] is None and meta["modality"] == {"invesalius_head_ct": "CT", "pydeface_mean_head": "MR"}
    assert set(entries) == set(meta["modality"]) and not (set(entries) & set(load_split()["heldout"]))
    assert sorted(p.name for p in root.glob("imagesTr/*.nii.gz")) == sorted(f"{c}_0000.nii.gz" for c in entries)
    assert not (root / "labelsTr").exists()
    for case, entry in entries.items():
        assert entry["labels"] is None and not entry["heldout"] and entry["license"]
        image = sitk.ReadImage(str(root / "imagesTr" / f"{case}_0000.nii.gz"))
        assert list(image.GetSize()) == entry["shape"] and min(image.GetSize()) > 100
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "imagesTr" / "invesalius_head_ct_0000.nii.gz")))
    assert ct.min() == -1024 and 0.05 < np.mean(ct > 300) < 0.3  # HU: air around a head with a skull
