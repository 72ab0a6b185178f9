"""Synthetic volumes for training (training.synthetic): painting a label map."""

from __future__ import annotations

import numpy as np

from medsam3d.training.synthetic import paint


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
