"""The synthetic data engine (medsam3d.training.synth): shape bank, composed scenes, painting, dataset wiring.

Every test builds its own tiny shape bank from a toy label map, so none needs data/public."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from medsam3d.errors import InputError
from medsam3d.training.config import load_config
from medsam3d.training.data import structures
from medsam3d.training.dataset import CropDataset, synth_config
from medsam3d.training.synth import SynthConfig, build_bank, compose, split_heldout
from medsam3d.training.synth.bank import ShapeBank, bank_for
from medsam3d.training.synth.paint import paint
from medsam3d.training.synth.scene import Scene
from medsam3d.training.synth.shapes import blob, rods, tree
from medsam3d.training.synth.tissues import CT_CONTRAST, CT_HU, tissue_of

REPO = Path(__file__).resolve().parents[2]
NAMES = {"background": 0, "liver": 1, "vertebrae_L1": 2, "aorta": 3, "lesion": 4, "lung_left": 5}


def toy_label(n: int = 64) -> np.ndarray:
    """(n, n, n) label map in model space: an organ, a bone, a tube, a lesion and a lung (values as NAMES)."""
    x, y, z = np.meshgrid(*[np.arange(n, dtype=float)] * 3, indexing="ij")
    label = np.zeros((n, n, n), dtype=np.uint16)
    label[((x - 22) / 14) ** 2 + ((y - 30) / 10) ** 2 + ((z - 32) / 12) ** 2 <= 1] = 1
    label[(np.abs(x - 45) < 6) & (np.abs(y - 45) < 5) & (np.abs(z - 20) < 5)] = 2
    label[((x - 45) ** 2 + (y - 20) ** 2 <= 9) & (z > 5) & (z < 58)] = 3
    label[(x - 25) ** 2 + (y - 32) ** 2 + (z - 34) ** 2 <= 16] = 4  # inside the organ
    label[((x - 40) / 8) ** 2 + ((y - 50) / 6) ** 2 + ((z - 48) / 8) ** 2 <= 1] = 5
    return label


def write_cache(root, case_ids=("toy_a",)) -> tuple:
    """A preprocessed cache as data.preprocess leaves it (case npz + records), with a dataset.json for names."""
    dataset = root / "Dataset999_Toy"
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "dataset.json").write_text(json.dumps({"labels": NAMES, "channel_names": {"0": "CT"}}))
    folder = root / "cache"
    folder.mkdir()
    records = []
    for k, case in enumerate(case_ids):
        label = np.roll(toy_label(), 3 * k, axis=0)
        image = np.where(label > 0, 40.0 + 20 * label, -100.0).astype(np.float32)
        np.savez(folder / f"{case}.npz", image=image, label=label)
        records.append({"case_id": case, "file": f"{case}.npz", "modality": "CT", "shape": list(label.shape),
                        "source": str(dataset / "imagesTr" / f"{case}_0000.nii.gz")})
    return folder, records


@pytest.fixture(scope="module")
def toy_bank(tmp_path_factory) -> ShapeBank:
    folder, records = write_cache(tmp_path_factory.mktemp("bank"))
    return build_bank(records, folder, min_voxels=20, log=lambda *_: None)


def test_bank_holds_each_structure_with_its_source_tissue_and_mask(toy_bank, tmp_path):
    assert sorted(toy_bank.names) == sorted(k for k in NAMES if k != "background")
    assert set(toy_bank.cases) == {"toy_a"}
    assert dict(zip(toy_bank.names, toy_bank.tissues)) == {"liver": "organ", "vertebrae_L1": "bone",
                                                           "aorta": "artery", "lesion": "lesion", "lung_left": "lung"}
    label = toy_label()
    for i in range(len(toy_bank)):  # each mask is its structure's bounding box, bit for bit
        lo, hi = toy_bank.origins[i], toy_bank.origins[i] + toy_bank.shapes[i]
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        assert np.array_equal(toy_bank.mask(i).astype(bool), label[box] == toy_bank.values[i])
        assert toy_bank.voxels[i] == (label == toy_bank.values[i]).sum()
    assert toy_bank.truncated[toy_bank.names.index("aorta")] == (label[..., [0, -1]] == 3).any()
    assert np.isclose(toy_bank.hu[toy_bank.names.index("liver")], 60.0)
    toy_bank.save(tmp_path / "bank.npz")
    again = ShapeBank.load(tmp_path / "bank.npz")
    assert again.names == toy_bank.names and np.array_equal(again.mask(2), toy_bank.mask(2))
    assert (tmp_path / "bank.npz").stat().st_size < 100_000


def test_held_out_cases_never_enter_the_bank_and_a_bank_holding_one_is_refused(tmp_path):
    held = sorted(split_heldout())
    assert {"lung1", "colin27", "ts_ct_dicom", "brain1", "brain2"} <= set(held)  # the project's split is read
    folder, records = write_cache(tmp_path, ("toy_a", "lung1", "toy_b"))
    messages = []
    bank = build_bank(records, folder, heldout=["toy_b"], min_voxels=20, log=messages.append)
    assert set(bank.cases) == {"toy_a"}  # lung1 from the split file, toy_b as asked
    assert "lung1" in messages[0] and "toy_b" in messages[0]
    bank.cases = ["lung1"] * len(bank)  # a bank built elsewhere from a held-out case
    bank.save(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="lung1"):
        ShapeBank.load(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="lung1"):
        bank_for(records, folder, path=tmp_path / "bad.npz", log=lambda *_: None)


@pytest.mark.parametrize("kind", ["anatomy", "procedural"])
def test_compose_is_a_pure_function_of_the_index(toy_bank, kind):
    cfg = SynthConfig(kind=kind, bank=toy_bank, seed=5)
    a, b, c = compose(7, cfg), compose(7, cfg), compose(8, cfg)
    assert a.image.shape == a.label.shape == (128, 128, 128)
    assert a.image.dtype == np.float32 and a.label.dtype == np.int16
    assert a.modality in ("ct", "mr") and np.isfinite(a.image).all()
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert np.array_equal(a.targets, b.targets) and a.modality == b.modality
    assert not np.array_equal(a.label, c.label)
    assert not np.array_equal(compose(7, SynthConfig(kind=kind, bank=toy_bank, seed=6)).label, a.label)


def test_targets_are_objects_of_at_least_min_voxels(toy_bank):
    found = 0
    for index in range(6):
        for kind in ("anatomy", "procedural"):
            s = compose(index, SynthConfig(kind=kind, bank=toy_bank, size=64, min_voxels=150))
            counts = np.bincount(s.label.ravel())
            assert all(counts[t] >= 150 for t in s.targets)
            assert not set(s.targets) & {0, 1}  # outside and body are never targets
            assert len(set(s.targets)) == len(s.targets)
            found += len(s.targets) > 0
            if s.modality == "mr":
                assert s.image.min() >= 0  # MR: a positive scale, as normalise expects
    assert found >= 10


def test_ct_painting_puts_each_tissue_in_its_hounsfield_range():
    scene = Scene(64)
    tissues = ["air", "lung", "fat", "muscle", "organ", "artery", "bone", "fluid"]
    for k, tissue in enumerate(tissues):  # slabs 8 voxels thick along x
        scene.regions[8 * k:8 * k + 8] = scene.background(tissue)
    for seed in range(4):
        image = paint(scene, "ct", np.random.default_rng(seed), thick_slice_prob=0.0)
        for k, tissue in enumerate(tissues):
            lo, hi = CT_HU[tissue]
            boost = max((CT_CONTRAST[p].get(tissue, (0, 0))[1] for p in CT_CONTRAST), default=0)
            centre = float(np.median(image[8 * k + 3:8 * k + 5]))
            assert lo - 40 <= centre <= hi + boost + 40, (tissue, centre)
    composed = compose(1, SynthConfig(kind="procedural", ct_prob=1.0, size=64))
    assert composed.modality == "ct"
    assert np.median(composed.image[composed.label == 0]) < -900 if (composed.label == 0).any() else True


def test_names_map_to_tissues():
    assert tissue_of("kidney_cyst_left") == "fluid"
    assert tissue_of("intervertebral_discs") == "cartilage"
    assert tissue_of("rib_left_3") == tissue_of("vertebrae_T4") == tissue_of("ribs") == "bone"
    assert tissue_of("lung_upper_lobe_left") == "lung" and tissue_of("trachea") == "airway"
    assert tissue_of("white_matter") == "wm" and tissue_of("grey_matter") == "gm"
    assert tissue_of("inferior_vena_cava") == "vein" and tissue_of("aorta") == "artery"
    assert tissue_of("pancreas") == "organ"


def _axes_ratio(mask: np.ndarray) -> float:
    """sqrt of largest / smallest principal variance of the voxel coordinates."""
    pts = np.argwhere(mask).astype(float)
    ev = np.linalg.eigvalsh(np.cov(pts.T))
    return float(np.sqrt(ev[-1] / max(ev[0], 1e-6)))


def test_procedural_tubes_and_rods_are_thin_and_elongated():
    for seed in range(5):
        rng = np.random.default_rng(seed)
        piece = tree(rng, 96, "artery", start=np.full(3, 48.0), radius=(1.5, 2.5), depth=0)
        assert piece is not None and piece.mask.sum() > 50
        assert _axes_ratio(piece.mask) > 3
        # thin: the thickest point is a few voxels from the tube's axis
        assert ndimage.distance_transform_edt(np.pad(piece.mask, 1)).max() <= 4
        ribs = rods(np.random.default_rng(seed), 96, "bone", count=1)
        for rib in ribs:
            assert _axes_ratio(rib.mask) > 3 and ndimage.distance_transform_edt(np.pad(rib.mask, 1)).max() <= 4


def test_blobs_with_rims_have_a_shell_around_an_inside():
    for seed in range(4):
        rng = np.random.default_rng(seed)
        piece = blob(rng, 64, np.full(3, 32.0), np.array([10.0, 12.0, 9.0]), "lesion", rim="rim", core="necrosis")
        (core, _), (rim, tissue) = piece.parts
        assert tissue == "rim" and rim.any() and (piece.mask | ~rim).all()
        depth = ndimage.distance_transform_edt(np.pad(piece.mask, 1))[1:-1, 1:-1, 1:-1]
        assert depth[rim].max() <= 4.5  # the rim hugs the surface...
        assert (piece.mask & ~rim).any() and depth[piece.mask & ~rim].max() > 5  # ...around an inside
        assert depth[core & piece.mask].min() > 1  # the core is deep inside
    scene = Scene(64)
    assert scene.add(piece) == 0  # nothing of it lands in the air around the body
    scene.regions[:] = scene.background("soft")
    label = scene.add(piece)
    assert len(set(scene.label_of)) == 3 and scene.label_of.count(label) == 3  # lesion, core, rim: one label
    box = tuple(slice(a, a + n) for a, n in zip(piece.lo, piece.mask.shape))
    assert np.array_equal(scene.label_map()[box] == label, piece.mask)
    assert (scene.label_map() == label).sum() == piece.mask.sum()


def _dataset(tmp_path, toy_bank, **synth):
    folder, records = write_cache(tmp_path)
    targets = structures(records, folder, None, 20)
    config = SynthConfig(bank=toy_bank, min_voxels=50) if synth else None
    return CropDataset(records, folder, targets, 48, seed=3, synth=config, **synth)


def test_dataset_draws_composed_scenes_deterministically_and_leaves_real_crops_alone(tmp_path, toy_bank):
    plain = _dataset(tmp_path / "a", toy_bank)
    mixed = _dataset(tmp_path / "b", toy_bank, anatomy_fraction=0.4, procedural_fraction=0.3)
    composed = 0
    for key in [(i, d) for i in range(len(plain)) for d in range(2)]:
        a, b, again = plain[key], mixed[key], mixed[key]
        assert b["image"].shape == b["target"].shape == (1, 48, 48, 48)
        assert torch.equal(b["image"], again["image"]) and torch.equal(b["target"], again["target"])
        assert set(torch.unique(b["target"]).tolist()) <= {0.0, 1.0} and b["target"].sum() > 0
        if np.random.default_rng([3, key[0], key[1], 1]).random() < 0.7:
            composed += 1
            assert not torch.equal(a["image"], b["image"])
        else:  # not drawn: the very crop a run without composed scenes gets
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])
    assert composed >= 3


def test_config_keys_reach_the_synth_config(tmp_path, toy_bank):
    cfg = load_config(None, ["data.anatomy_fraction=0.3", "data.anatomy.max_shapes=4", "data.anatomy.scale=[0.8,1.2]"])
    with pytest.raises(InputError, match="unknown config key"):
        load_config(None, ["data.anatomy.max_shape=4"])
    folder, records = write_cache(tmp_path)
    assert synth_config(load_config(None).as_dict()["data"], records, folder) is None  # default: off, no bank built
    data = cfg.as_dict()["data"]
    synth = synth_config(data, records, folder, log=lambda *_: None)
    assert synth.max_shapes == 4 and synth.scale == (0.8, 1.2) and synth.min_voxels == cfg.data.min_voxels
    assert len(synth.bank) == 5 and any(folder.glob("shapes_v*.npz"))
    with pytest.raises(InputError, match="sum to at most 1"):
        synth_config({**data, "procedural_fraction": 0.8}, records, folder)


def test_a_training_run_draws_composed_scenes_from_its_own_cases(tmp_path):
    from medsam3d.training import ddp
    from medsam3d.training.synthetic import write_toy_dataset
    from medsam3d.training.trainer import Run

    toy = write_toy_dataset(tmp_path / "Dataset001_Toy", n_cases=2, shape=(48, 48, 40))
    cfg = load_config(REPO / "configs/smoke/train.yaml", [
        f"data.roots=[{toy}]", "data.anatomy_fraction=0.5", "data.procedural_fraction=0.5",
        "data.anatomy.max_shapes=4"])
    run = Run(cfg, tmp_path / "run", resume=False, kind="train")
    try:
        dataset = run.dataset(64)
        items = [dataset[(i, 0)] for i in range(3)]
        assert all(item["image"].shape == (1, 64, 64, 64) and item["target"].sum() > 0 for item in items)
        assert torch.equal(dataset[(1, 0)]["image"], items[1]["image"])
        assert run.dataset(64, fixed=True).synth is None  # fixed (distillation) crops stay real
    finally:
        ddp.cleanup()
    banks = list((tmp_path / "run" / "cache").glob("*/shapes_v*.npz"))
    assert len(banks) == 1 and set(ShapeBank.load(banks[0]).cases) == {"toy_000", "toy_001"}
