"""Training pieces: configs, data discovery and bad data, cached preprocessing, synthetic volumes, clicks,
the progressive schedule, and loss falling on a tiny set."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medsam3d.training.clicks import error_clicks, first_clicks
from medsam3d.training.config import load_config
from medsam3d.training.data import discover, preprocess, structures
from medsam3d.training.distill import matched_layers, matched_teacher_blocks
from medsam3d.training.synthetic import paint, write_toy_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "Dataset001_Toy", n_cases=3)


def test_config_overrides_and_unknown_keys(tmp_path):
    cfg = load_config(REPO / "configs/smoke/train.yaml", ["train.steps=3", "model.config.embed_dim=32"])
    assert cfg["train"]["steps"] == 3 and cfg["model"]["config"]["embed_dim"] == 32
    assert cfg["train"]["clicks"] == 2 and cfg["distill"]["stage1_steps"] == 100  # file, then defaults
    with pytest.raises(ValueError, match="unknown config key 'train.stepz'"):
        load_config(REPO / "configs/smoke/train.yaml", ["train.stepz=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian: {steps: 3}\n")
    with pytest.raises(ValueError, match="unknown config key 'trian'"):
        load_config(bad)
    with pytest.raises(ValueError, match="train.follow must be best or predicted, not 'head'"):
        load_config(REPO / "configs/smoke/train.yaml", ["train.follow=head"])


def test_a_held_out_case_that_is_not_there_is_an_error_not_trained_on(toy, tmp_path):
    _, records = preprocess([toy], tmp_path / "cache", holdout=["toy_001"], log=lambda m: None)
    assert [r["case_id"] for r in records] == ["toy_000", "toy_002"]
    with pytest.raises(ValueError, match="held-out case.s. toy_01 not found in the data roots"):
        preprocess([toy], tmp_path / "cache", holdout=["toy_01"], log=lambda m: None)


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


def test_paint_gives_each_label_its_own_intensity():
    label = np.zeros((32, 32, 32), dtype=np.uint8)
    label[8:20, 8:20, 8:20] = 1
    label[22:30, 4:12, 10:28] = 2
    a = paint(label, np.random.default_rng(1))
    b = paint(label, np.random.default_rng(1))
    c = paint(label, np.random.default_rng(2))
    assert a.shape == label.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # deterministic given the generator
    assert not np.allclose(a, c)
    means = [a[label == v].mean() for v in (0, 1, 2)]
    assert min(abs(means[i] - means[j]) for i in range(3) for j in range(i + 1, 3)) > 0.01


def test_clicks_land_inside_targets_and_on_errors():
    gen = torch.Generator().manual_seed(0)
    targets = torch.zeros(2, 1, 16, 16, 16)
    targets[0, 0, 2:6, 2:6, 2:6] = 1
    targets[1, 0, 8:14, 8:14, 8:14] = 1
    points, labels = first_clicks(targets, gen)
    assert points.shape == (2, 1, 3) and labels.tolist() == [[1], [1]]
    for b in range(2):
        x, y, z = points[b, 0].long()
        assert targets[b, 0, x, y, z] == 1
    pred = torch.zeros_like(targets)
    pred[0] = targets[0]
    pred[0, 0, 10:14, 10:14, 10:14] = 1  # sample 0: extra blob -> negative click there
    pred[1, 0, 8:10, 8:14, 8:14] = 1  # sample 1: most of the target missed -> positive click in the miss
    points, labels = error_clicks(pred, targets, gen)
    assert labels.tolist() == [[0], [1]]
    x, y, z = points[0, 0].long()
    assert pred[0, 0, x, y, z] == 1 and targets[0, 0, x, y, z] == 0
    x, y, z = points[1, 0].long()
    assert pred[1, 0, x, y, z] == 0 and targets[1, 0, x, y, z] == 1


def test_progressive_schedule():
    assert matched_teacher_blocks(6, 12) == [1, 3, 5, 7, 9, 11]  # student block i <- teacher block 2i
    assert matched_teacher_blocks(3, 6) == [1, 3, 5]
    assert [matched_layers(s, 3, 2) for s in range(8)] == [1, 1, 2, 2, 3, 3, 3, 3]


def test_loss_falls_on_a_tiny_set(toy, tmp_path):
    from medsam3d.training.trainer import run_interactive

    cfg = load_config(REPO / "configs/smoke/train.yaml", [
        f"data.roots=[{toy}]", "data.labels=[1]", "data.synthetic_fraction=0.0", "train.steps=24",
        "train.lr=0.003", "train.warmup=1", "train.log_every=1", "train.checkpoint_every=100", "train.box_prob=0.0",
    ])
    run_interactive(cfg, tmp_path / "run")
    with open(tmp_path / "run" / "metrics.csv") as f:
        losses = [float(row["value"]) for row in csv.DictReader(f) if row["metric"] == "loss"]
    assert len(losses) == 24
    assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6])
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "model.yaml").is_file()


def test_holistic_distillation_with_worker_processes(toy, tmp_path):
    from medsam3d.training.distill import run_distill

    cfg = load_config(REPO / "configs/smoke/distill.yaml", [
        f"data.roots=[{toy}]", "distill.mode=holistic", "distill.holistic_steps=8", "data.workers=2",
        "train.log_every=1", "train.lr=0.003",
    ])
    run_distill(cfg, tmp_path / "holistic")
    with open(tmp_path / "holistic" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    feature = [float(r["value"]) for r in rows if r["metric"] == "feature_loss"]
    assert len(feature) == 8 and feature[-1] < feature[0]
    state = torch.load(tmp_path / "holistic" / "checkpoints" / "last.pt", weights_only=False)
    assert state["stage"] == "holistic" and not any(k.startswith("teacher") for k in state["distiller"])


def test_cli_training_with_no_usable_data_exits_2(tmp_path, capsys):
    from medsam3d.cli import main

    empty = tmp_path / "Dataset009_Empty"
    (empty / "imagesTr").mkdir(parents=True)
    (empty / "labelsTr").mkdir()
    (empty / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0},
                                                    "file_ending": ".nii.gz"}))
    code = main(["train", "--config", str(REPO / "configs/smoke/train.yaml"), "--out", str(tmp_path / "run"),
                 "--set", f"data.roots=[{empty}]"])
    err = capsys.readouterr().err
    assert code == 2 and "imagesTr holds no" in err and "Traceback" not in err


def test_gradient_accumulation_steps_once_per_accumulated_batch(toy, tmp_path):
    from medsam3d.training.trainer import run_interactive

    cfg = load_config(REPO / "configs/smoke/train.yaml", [
        f"data.roots=[{toy}]", "train.steps=3", "train.grad_accum=2", "train.log_every=1",
        "train.checkpoint_every=1",
    ])
    run_interactive(cfg, tmp_path / "accum")
    state = torch.load(tmp_path / "accum" / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == 3
    assert state["scheduler"]["last_epoch"] == 3  # one scheduler (and optimiser) step per 2 micro-batches
    assert all(s["step"] == 3 for s in state["optimizer"]["state"].values())


def test_interactive_step_learns_to_segment_a_sample():
    """Not only the loss: after a few dozen steps on one sample, the clicked object is actually segmented."""
    from medsam3d.models import build_model
    from medsam3d.training.interactive import InteractiveStep

    torch.manual_seed(0)
    model = build_model("medsam3d-tiny", img_size=64, embed_dim=48, num_heads=2, out_chans=48, decoder_mlp_dim=96,
                        decoder_heads=2, iou_head_hidden_dim=32, mask_in_chans=8).train()
    image = torch.randn(1, 1, 64, 64, 64) * 0.3
    target = torch.zeros(1, 1, 64, 64, 64)
    target[..., 20:44, 18:40, 22:46] = 1
    image = image + 2 * target
    step = InteractiveStep(model, clicks=1, loss_downsample=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dices = []
    for i in range(70):
        loss, info = step(image, target, seed=i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        dices.append(info["dice"])
    assert max(dices[-5:]) > 0.6 and dices[-1] > dices[0]


def test_distill_resumed_between_stages_starts_stage_2_from_the_stage_1_student(toy, tmp_path):
    from medsam3d.training.distill import run_distill

    base = [f"data.roots=[{toy}]", "distill.stage1_steps=3"]
    out = tmp_path / "distill"
    run_distill(load_config(REPO / "configs/smoke/distill.yaml", [*base, "distill.stage2_steps=0"]), out)
    stage1 = torch.load(out / "model.pt", weights_only=False)["model"]
    run_distill(load_config(REPO / "configs/smoke/distill.yaml", [*base, "distill.stage2_steps=2"]), out,
                resume=True)
    final = torch.load(out / "model.pt", weights_only=False)["model"]
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["stage"] == 2 and state["step"] == 5
    encoder = [k for k in stage1 if k.startswith("image_encoder.")]
    assert all(torch.equal(stage1[k], final[k]) for k in encoder)  # frozen in stage 2, carried over from stage 1
    assert any(not torch.equal(stage1[k], final[k]) for k in final if k.startswith("mask_decoder."))


def test_affine_augmentation_rotates_and_scales_image_and_target_together(tmp_path):
    """A bright ellipsoid labelled 1: with affine_prob=1 the crop's target still sits exactly on the bright voxels,
    its size changes within the scale range, and with affine_prob=0 the crop is the plain (flip-only) crop."""
    from monai import transforms as mt

    from medsam3d.training.data import Structure
    from medsam3d.training.dataset import CropDataset

    n = 64
    z, y, x = np.mgrid[:n, :n, :n]
    blob = ((x - 32) / 10.0) ** 2 + ((y - 32) / 6.0) ** 2 + ((z - 32) / 4.0) ** 2 <= 1
    image = np.where(blob, 1000.0, 0.0).astype(np.float32) + 10.0
    np.savez(tmp_path / "case.npz", image=image, label=blob.astype(np.uint8))
    records = [{"case_id": "c", "file": "case.npz", "modality": "MR"}]
    structure = Structure(0, 1, int(blob.sum()), (32, 32, 32), ((28, 26, 22), (36, 38, 42)))

    def crops(prob):
        data = CropDataset(records, tmp_path, [structure], 48, seed=0, affine_prob=prob, rotate_deg=30, scale=0.3)
        data.intensity = mt.Compose([])  # isolate the spatial part
        return [data[(0, draw)] for draw in range(6)]

    plain_sizes = {int(item["target"].sum()) for item in crops(0.0)}
    assert plain_sizes == {int(blob.sum())}  # flips and shifts keep every voxel of it
    sizes = []
    for item in crops(1.0):
        img, target = item["image"][0].numpy(), item["target"][0].numpy()
        assert img.shape == target.shape == (48, 48, 48)
        assert target.min() >= 0.0 and target.max() <= 1.0
        inside, outside = img[target > 0.9], img[target < 0.1]
        assert inside.mean() > outside.mean() + 2 * outside.std()  # still the bright voxels
        sizes.append(float(target.sum()))
    assert len({round(s) for s in sizes}) > 1  # different draws, different geometry
    assert all(0.3 * blob.sum() < s < 2.5 * blob.sum() for s in sizes)
