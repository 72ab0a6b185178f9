"""Pseudo-masks (medsam3d.training.pseudo) on small synthetic volumes, and their wiring into the training crops."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medsam3d.errors import InputError
from medsam3d.training.config import DEFAULTS
from medsam3d.training.data import Structure
from medsam3d.training.dataset import CropDataset
from medsam3d.training.pseudo import PseudoMasks, PseudoSettings, PseudoSource, pseudo_for, pseudo_masks

BLOBS = {"fat": ((20, 20, 32), 8, -100.0), "bone": ((44, 22, 30), 7, 700.0), "fluid": ((32, 44, 34), 9, 160.0)}


def three_blobs(seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A 64^3 CT-like volume [x, y, z]: air around a soft-tissue box (40 HU) holding three separated balls of
    other densities, with noise -> (image in HU, ball masks)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(64)] * 3, indexing="ij"), -1)
    image = np.full((64,) * 3, -1000.0, np.float32)
    image[6:58, 6:58, 6:58] = 40.0
    masks = {}
    for name, (centre, radius, hu) in BLOBS.items():
        masks[name] = ((grid - centre) ** 2).sum(-1) <= radius ** 2
        image[masks[name]] = hu
    image += rng.normal(0, 8, image.shape).astype(np.float32)
    return image, masks


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def blobs():
    image, masks = three_blobs()
    return image, masks, pseudo_masks(image, "CT")


def test_same_input_same_masks(blobs):
    image, _, first = blobs
    again = pseudo_masks(image.copy(), "CT")
    for key in ("bits", "offsets", "lo", "shapes", "voxels", "centers", "scale", "level"):
        np.testing.assert_array_equal(getattr(first, key), getattr(again, key))


def test_three_blobs_are_found(blobs):
    _, masks, pm = blobs
    assert len(pm) > 0
    for name, truth in masks.items():
        best = max(dice(pm.mask(i), truth) for i in range(len(pm)))
        assert best > 0.8, f"{name}: best Dice {best:.2f}"


def test_size_and_compactness_filters_hold(blobs):
    _, _, pm = blobs
    s = PseudoSettings()
    for i in range(len(pm)):
        box = pm.box(i)
        n = int(box.sum())
        assert n == pm.voxels[i] and s.min_voxels <= n <= s.max_voxels
        assert n / box.size >= s.min_fill  # the stored box is the mask's bounding box
        assert all(box.any(axis=tuple(a for a in range(3) if a != k))[[0, -1]].all() for k in range(3))
        faces = sum(np.count_nonzero(np.diff(np.pad(box, 1).astype(np.int8), axis=k)) for k in range(3))
        assert faces / n ** (2 / 3) <= s.max_surface
        assert ndimage.label(box)[1] == 1, "a pseudo-mask is one connected piece"
        assert pm.mask(i)[tuple(pm.centers[i])], "the centre voxel lies inside the mask"


def test_stricter_filters_give_fewer_masks():
    image, _ = three_blobs()
    loose = pseudo_masks(image, "CT")
    strict = pseudo_masks(image, "CT", PseudoSettings(min_voxels=2000, max_voxels=2500))
    assert len(strict) < len(loose)
    assert all(2000 <= v <= 2500 for v in strict.voxels)
    assert len(pseudo_masks(np.full((32,) * 3, -1000.0, np.float32), "CT")) == 0, "air has no structure"


def test_config_defaults_are_the_settings_defaults():
    options = dict(DEFAULTS["data"]["pseudo"])
    assert options.pop("roots") == [] and DEFAULTS["data"]["pseudo_fraction"] == 0.0
    assert PseudoSettings.from_options(options) == PseudoSettings()
    with pytest.raises(InputError, match="unknown pseudo-mask setting"):
        PseudoSettings.from_options({"levls": [0.1]})


def _case(tmp_path, case_id: str = "toy") -> tuple[list[dict], object]:
    image, masks = three_blobs(1)
    label = masks["bone"].astype(np.uint16)
    np.savez(tmp_path / f"{case_id}.npz", image=image, label=label)
    record = {"case_id": case_id, "file": f"{case_id}.npz", "modality": "CT", "shape": list(image.shape)}
    return [record], tmp_path


def test_pseudo_masks_are_cached_and_held_out_cases_refused(tmp_path):
    records, folder = _case(tmp_path)
    settings = PseudoSettings(scales=(6,))
    first = pseudo_for(records[0], folder, settings, log=lambda *_: None)
    cached = list((folder / "pseudo").glob("toy_*.npz"))
    assert len(cached) == 1 and settings.key() in cached[0].name
    again, meta = PseudoMasks.load(cached[0])
    np.testing.assert_array_equal(again.bits, first.bits)
    assert meta["case_id"] == "toy" and PseudoSettings.from_options(meta["settings"]) == settings
    with pytest.raises(InputError, match="held out"):
        pseudo_for(records[0], folder, settings, heldout=["toy"])
    with pytest.raises(InputError, match="held out"):  # the project's split, whatever the caller passes
        pseudo_for({**records[0], "case_id": "colin27"}, folder, settings)
    with pytest.raises(InputError, match="held-out"):
        PseudoSource([({**records[0], "case_id": "tptbox_ct"}, folder, first)])


def _dataset(records, folder, pseudo_fraction=None, source=None, seed=3):
    structures = [Structure(0, 1, 1000, (44, 22, 30), ((37, 15, 23), (51, 29, 37)))]
    extra = {} if pseudo_fraction is None else {"pseudo_fraction": pseudo_fraction, "pseudo": source}
    return CropDataset(records, folder, structures, 32, seed, synthetic_fraction=0.3, affine_prob=0.5, **extra)


def test_crops_are_unchanged_at_pseudo_fraction_zero_and_deterministic_above(tmp_path):
    records, folder = _case(tmp_path)
    masks = pseudo_for(records[0], folder, PseudoSettings(scales=(6,)), log=lambda *_: None)
    source = PseudoSource([(dict(records[0]), folder, masks)])
    plain, zero = _dataset(records, folder), _dataset(records, folder, 0.0, source)
    for key in [(0, d) for d in range(6)]:
        a, b = plain[key], zero[key]
        assert torch_equal(a["image"], b["image"]) and torch_equal(a["target"], b["target"])

    every = _dataset(records, folder, 1.0, source)
    first = [every[(0, d)] for d in range(4)]
    again = [_dataset(records, folder, 1.0, source)[(0, d)] for d in range(4)]
    for a, b in zip(first, again):
        assert torch_equal(a["image"], b["image"]) and torch_equal(a["target"], b["target"])
    targets = [s["target"].numpy() for s in first]
    assert all(t.shape == (1, 32, 32, 32) and t.sum() > 0 for t in targets)
    assert any(not np.array_equal(targets[0], t) for t in targets[1:]), "draws differ"
    with pytest.raises(ValueError, match="PseudoSource"):
        _dataset(records, folder, 0.5, None)


def torch_equal(a, b) -> bool:
    return bool((a == b).all())
