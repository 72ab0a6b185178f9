"""Per-modality intensity handling (intensity.normalise) and how a scan's modality is guessed. (The modality a
Segmenter chooses and reports: tests/test_segmenter.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from medsam3d.intensity import guess_modality, modality_of, normalise, zscore_foreground


def _ct_like(rng: np.random.Generator) -> np.ndarray:
    """Air around a water-like body holding a bone-like block, in Hounsfield units."""
    hu = np.full((40, 40, 40), -1000.0, dtype=np.float32)
    hu[5:35, 5:35, 5:35] = 40 + 10 * rng.standard_normal((30, 30, 30))
    hu[15:25, 15:25, 15:25] = 700.0
    return hu


def test_modality_guess_and_names():
    rng = np.random.default_rng(0)
    assert guess_modality(_ct_like(rng)) == "ct"
    assert guess_modality(rng.uniform(0, 800, (40, 40, 40))) == "mr"
    assert [modality_of(n) for n in ("CT", "ct_arterial", "CTA", "MRI", "T1", "ADC", "unknown")] == \
        ["ct", "ct", "ct", "mr", "mr", "mr", "mr"]


def test_ct_inside_the_hu_range_is_exactly_sam_med3d_normalisation():
    rng = np.random.default_rng(1)
    hu = _ct_like(rng)
    np.testing.assert_array_equal(normalise(hu, "ct"), zscore_foreground(hu))
    # scanner padding (-3024) and metal (> 3071) are clipped: the body's statistics do not move
    padded = hu.copy()
    padded[:2] = -3024.0
    padded[20, 20, 20] = 20000.0
    expected = hu.copy()
    expected[:2] = -1024.0
    expected[20, 20, 20] = 3071.0
    np.testing.assert_allclose(normalise(padded, "ct"), zscore_foreground(expected), atol=1e-6)


def test_mr_hot_spots_do_not_set_the_scale():
    rng = np.random.default_rng(2)
    mr = rng.uniform(100, 200, (40, 40, 40)).astype(np.float32)
    spiked = mr.copy()
    spiked.flat[rng.choice(mr.size, 50, replace=False)] = 1e5  # 0.08% hot voxels
    plain = zscore_foreground(spiked)
    robust = normalise(spiked, "mr")
    body = spiked < 1e4
    # without clipping the spikes squash the tissue into a tiny range; with it the tissue keeps unit-ish spread
    assert plain[body].std() < 0.1 and 0.8 < robust[body].std() < 1.2
    with pytest.raises(ValueError, match="unknown modality"):
        normalise(mr, "pet")
