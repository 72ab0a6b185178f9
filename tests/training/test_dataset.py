"""Training crops and their sampling (training.dataset): size-aware repeats, the step batch sampler, and the affine
augmentation moving image and target together."""

from __future__ import annotations

import numpy as np

from medsam3d.training.dataset import StepBatchSampler, size_repeats


def test_size_repeats_favour_large_structures_within_a_cap():
    voxels = np.array([100, 1_000, 10_000, 100_000, 1_000_000])
    assert size_repeats(voxels, 0.0).tolist() == [1, 1, 1, 1, 1]
    assert size_repeats(voxels, 0.5).tolist() == [1, 1, 1, 3, 4]


def test_sampler_with_repeats_draws_each_structure_that_often_per_epoch_as_different_crops():
    repeats = np.array([1, 3, 2])
    sampler = StepBatchSampler(3, batch_size=2, rank=0, world=1, seed=0, repeats=repeats)
    keys = [key for batch, _ in zip(sampler, range(6)) for key in batch]  # 12 samples = two epochs
    epoch0, epoch1 = keys[:6], keys[6:]
    assert sorted(i for i, _ in epoch0) == sorted(i for i, _ in epoch1) == [0, 1, 1, 1, 2, 2]
    assert len(set(keys)) == 12  # every (structure, draw) once: a repeated structure is a new crop each time
    assert {d for _, d in epoch0} <= {0, 1, 2} and {d for _, d in epoch1} <= {3, 4, 5}
    resumed = StepBatchSampler(3, batch_size=2, rank=0, world=1, seed=0, repeats=repeats, start=4)
    assert next(iter(resumed)) == keys[8:10]
    # without repeats, the draw is the epoch, as before size-aware sampling existed
    plain = StepBatchSampler(3, batch_size=3, rank=0, world=1, seed=0)
    assert [sorted(b) for b, _ in zip(plain, range(2))] == [[(0, 0), (1, 0), (2, 0)], [(0, 1), (1, 1), (2, 1)]]


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
