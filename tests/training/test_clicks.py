"""Simulated clicks for training (training.clicks): inside targets and on errors, the protocol's own clicks when
central, and random ones otherwise."""

from __future__ import annotations

import torch

from medsam3d.evaluation.protocol import deepest_point, next_click
from medsam3d.training.clicks import error_clicks, first_clicks


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


def _box_target(size: int = 32) -> torch.Tensor:
    target = torch.zeros(1, 1, size, size, size)
    target[..., 4:20, 6:26, 8:16] = 1
    return target


def test_central_clicks_are_the_protocols_clicks():
    target = _box_target()
    gen = torch.Generator().manual_seed(0)
    points, labels = first_clicks(target, gen, central_prob=1.0)
    assert labels.tolist() == [[1]]
    assert points[0, 0].tolist() == deepest_point(target[0, 0].numpy() > 0).tolist()

    pred = torch.zeros_like(target)
    pred[..., 4:20, 6:26, 8:12] = 1  # the target's far half in z is missed
    pred[..., 25:28, 25:28, 25:28] = 1  # and a small extra blob
    points, labels = error_clicks(pred, target, gen, central_prob=1.0)
    where, sign = next_click(pred[0, 0].numpy() > 0, target[0, 0].numpy() > 0)
    assert labels.tolist() == [[sign]] == [[1]]
    assert points[0, 0].tolist() == where.tolist()


def test_random_clicks_still_vary_when_central_prob_is_zero():
    target = _box_target()
    clicks = {tuple(first_clicks(target, torch.Generator().manual_seed(s))[0][0, 0].tolist()) for s in range(8)}
    assert len(clicks) > 4  # uniformly random voxels of the target, not one fixed point
    for c in clicks:
        assert target[(0, 0, *map(int, c))] == 1
