"""The metrics (evaluation.metrics): Dice and NSD on known values, and NSD equal to MONAI's number."""

from __future__ import annotations

import numpy as np
import pytest

from medsam3d.evaluation.metrics import dice, nsd

from helpers import box


def test_metrics_known_values():
    a = box((30, 30, 30), (0, 0, 0), (10, 10, 10))
    b = box((30, 30, 30), (5, 0, 0), (15, 10, 10))
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0 and dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert nsd(a, a, (1, 1, 1)) == pytest.approx(1.0)
    shifted = box((30, 30, 30), (1, 0, 0), (11, 10, 10))
    assert nsd(a, shifted, (1, 1, 1), 2.0) == pytest.approx(1.0)  # 1 mm shift within 2 mm tolerance
    assert nsd(a, b, (1, 1, 1), 2.0) < 0.8  # 5 mm shift
    assert nsd(a, shifted, (3, 1, 1), 2.0) < 1.0  # the same shift is 3 mm along a 3 mm axis


def test_nsd_is_monais_number():
    from scipy import ndimage

    from medsam3d.evaluation.metrics import monai_nsd

    rng = np.random.default_rng(1)
    for trial in range(12):
        a = ndimage.gaussian_filter(rng.normal(size=(30, 34, 26)), 3) > 0
        b = ndimage.binary_dilation(a, iterations=2) if trial % 2 else \
            ndimage.gaussian_filter(rng.normal(size=(30, 34, 26)), 3) > 0
        spacing = [(1.0, 1.0, 1.0), (0.71484375, 0.71484375, 2.526315689086914), (0.977, 0.8, 2.0)][trial % 3]
        assert nsd(a, b, spacing, 2.0) == monai_nsd(a, b, spacing, 2.0)
