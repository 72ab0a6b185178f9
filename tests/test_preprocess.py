"""Window resampling (medsam3d.preprocess): pasting a window's logits back onto the scan."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import SPHERE_CENTER_LPS, sphere_volume


@pytest.mark.parametrize("region", [(slice(50, 80), slice(40, 90), slice(60, 75)),  # inside the window
                                    (slice(0, 30), slice(90, 128), slice(60, 75))])  # touching two window faces
def test_paste_back_of_the_positive_region_only_gives_the_same_mask(region):
    """positive_only resamples only the window voxels around the positive logits, on an oblique scan."""
    from medsam3d.preprocess import Window, paste_back

    volume, _ = sphere_volume("oblique")
    window = Window(tuple(SPHERE_CENTER_LPS + [5.0, -3.0, 2.0]))
    rng = np.random.default_rng(0)
    logits = np.full((128, 128, 128), -3.0, dtype=np.float32)
    logits[region] = rng.normal(0.5, 1.0, logits[region].shape)
    full = np.zeros(volume.shape, bool)
    small = np.zeros(volume.shape, bool)
    box, values = paste_back(logits, window, volume)
    full[box] = values > 0
    box_small, values_small = paste_back(logits, window, volume, positive_only=True)
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
