"""Window resampling (medsam3d.preprocess): pasting a window's logits back onto the scan."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import SPHERE_CENTER_LPS, sphere_volume


@pytest.mark.parametrize("region", [(slice(50, 80), slice(40, 90), slice(60, 75)),  # inside the window
                                    (slice(0, 30), slice(90, 128), slice(60, 75))])  # touching two window faces
def test_paste_back_of_the_positive_region_only_gives_the_same_mask(region):
    """Pasting only the block around the positive logits (``positive_part``) gives the whole window's mask, on an
    oblique scan."""
    from medsam3d.preprocess import Window, paste_back, positive_part

    volume, _ = sphere_volume("oblique")
    window = Window(tuple(SPHERE_CENTER_LPS + [5.0, -3.0, 2.0]))
    rng = np.random.default_rng(0)
    logits = np.full((128, 128, 128), -3.0, dtype=np.float32)
    logits[region] = rng.normal(0.5, 1.0, logits[region].shape)
    full = np.zeros(volume.shape, bool)
    small = np.zeros(volume.shape, bool)
    box, values = paste_back(logits, window, volume)
    full[box] = values > 0
    offset, block = positive_part(logits)
    box_small, values_small = paste_back(block, window, volume, offset=offset)
    small[box_small] = values_small > 0
    assert values_small.size < values.size / 4
    assert full.sum() > 1000
    np.testing.assert_array_equal(small, full)


@pytest.mark.parametrize("side", [32, 64])
def test_numpy_upsampling_and_pooling_match_torch(side):
    """The Segmenter's numpy resampling between the model's low-res grid and the window equals PyTorch's
    trilinear (align_corners=False) and adaptive average pooling, which the model was trained with."""
    import torch
    import torch.nn.functional as F

    from medsam3d.preprocess import block_mean, upsample_logits

    rng = np.random.default_rng(side)
    low = (rng.standard_normal((side,) * 3) * 10).astype(np.float32)
    want = F.interpolate(torch.from_numpy(low)[None, None], size=(128,) * 3, mode="trilinear",
                         align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(upsample_logits(low, 128), want, atol=2e-5)
    full = rng.standard_normal((128,) * 3).astype(np.float32)
    pooled = F.adaptive_avg_pool3d(torch.from_numpy(full)[None, None], (side,) * 3)[0, 0].numpy()
    np.testing.assert_allclose(block_mean(full, side), pooled, atol=1e-6)
    with pytest.raises(ValueError, match="whole factor"):
        upsample_logits(low, 100)


@pytest.mark.parametrize("side", [32, 64, 128])
def test_part_of_the_upsampled_window_equals_the_whole_ones_part(side):
    """Upsampling only a block of the window, or only around the voxels > 0 (what a mask needs), gives exactly the
    values of the whole window's upsampling there: the Segmenter's answers do not depend on which it did."""
    from medsam3d.preprocess import positive_logits, positive_part, upsample_logits

    rng = np.random.default_rng(side)
    low = (rng.standard_normal((side,) * 3) * 4 - 6).astype(np.float32)
    full = upsample_logits(low, 128)
    for _ in range(10):
        start = rng.integers(0, 128, 3)
        stop = np.minimum(start + rng.integers(1, 128, 3), 128)
        part = upsample_logits(low, 128, start, stop)
        np.testing.assert_array_equal(part, full[tuple(slice(a, b) for a, b in zip(start, stop))])
    for region in [(slice(0, 3), slice(5, 9), slice(side - 4, side)), (slice(side // 3, side // 2),) * 3]:
        blob = np.full((side,) * 3, -5.0, dtype=np.float32)
        blob[region] = rng.normal(1.0, 1.0, blob[region].shape)
        lo, part = positive_logits(blob, 128)
        want_lo, want = positive_part(upsample_logits(blob, 128))
        np.testing.assert_array_equal(lo, want_lo)
        np.testing.assert_array_equal(part, want)
        assert part.size < 128 ** 3 / 8
    assert positive_logits(np.full((side,) * 3, -1.0, dtype=np.float32), 128)[1] is None


@pytest.mark.parametrize("geometry", ["ras", "lps", "permuted", "oblique"])
def test_paste_mask_gives_paste_backs_mask(geometry):
    """The mask-only paste-back (interpolating only voxels whose 8 window neighbours disagree in sign) marks exactly
    the voxels SimpleITK's linear resampling puts above zero: flipped, permuted and anisotropic grids, blocks that
    touch the window's faces; oblique scans take SimpleITK's path."""
    from medsam3d.io import Volume
    from medsam3d.preprocess import Window, paste_back, paste_mask, positive_logits

    directions = {"ras": np.diag([-1.0, -1.0, 1.0]), "lps": np.eye(3),
                  "permuted": np.array([[0.0, 0, 1], [-1, 0, 0], [0, 1, 0]]),
                  "oblique": sphere_volume("oblique")[0].direction}
    rng = np.random.default_rng(len(geometry))
    compared = 0
    for trial in range(4):
        spacing = rng.uniform(0.6, 2.5, 3)
        shape = tuple(int(n) for n in rng.integers(60, 140, 3))
        volume = Volume(np.zeros(shape, np.int16), spacing, rng.uniform(-40, 40, 3), directions[geometry])
        centre = volume.ijk_to_lps((np.array(shape) - 1) / 2 + rng.uniform(-10, 10, 3))
        window = Window(tuple(float(c) for c in np.round(centre / 1.5) * 1.5))
        low = (rng.standard_normal((32,) * 3) - 3).astype(np.float32)
        low[8:24, 4:28, 10:22] += 5  # a blob with a noisy border
        if trial % 2:
            low[:3] += 9  # touching a face of the window
        offset, block = positive_logits(low, 128)
        box, logits = paste_back(block, window, volume, offset=offset)
        box_mask, mask = paste_mask(block, window, volume, offset=offset)
        assert box_mask == box and mask.dtype == bool
        np.testing.assert_array_equal(mask, logits > 0)
        compared += mask.sum()
    assert compared > 10000
