"""Dice and normalised surface Dice (NSD) on the scan's own grid (NSD as MONAI computes it)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import compute_surface_dice
from monai.metrics.utils import get_mask_edges
from scipy.spatial import KDTree

from ..boxes import bounding_box


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """2|P n T| / (|P| + |T|); 1.0 when both are empty."""
    pred, target = pred > 0, target > 0
    box = bounding_box(pred | target)  # the counts outside it are zero
    pred, target = pred[box], target[box]
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, target).sum() / total)


def nsd(pred: np.ndarray, target: np.ndarray, spacing, tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice at ``tolerance_mm`` with the voxel ``spacing`` of the arrays' axes: the share of
    both masks' surface voxels (MONAI's edges) within the tolerance of the other mask's surface.

    The same number as MONAI's ``compute_surface_dice`` on the same crop (tests/evaluation/test_metrics.py checks it),
    which finds every surface voxel's nearest neighbour; here the search stops at the tolerance, which is all
    the metric asks, and costs seconds less when one surface lies far from the other."""
    pred, target = pred > 0, target > 0
    if not pred.any() and not target.any():
        return 1.0
    if not pred.any() or not target.any():
        return 0.0
    # crop to the union's bounding box (plus the tolerance) so that the edge search stays small
    margin = [int(np.ceil(tolerance_mm / s)) + 2 for s in spacing]
    box = bounding_box(pred | target, margin)
    edges = get_mask_edges(torch.from_numpy(pred[box]), torch.from_numpy(target[box]), crop=True)
    scale = np.asarray([float(s) for s in spacing], dtype=np.float64)
    pred_xyz, target_xyz = (np.argwhere(e.numpy()).astype(np.float64) * scale for e in edges)  # (N, 3) mm
    bound = tolerance_mm * (1 + 1e-6) + 1e-9  # beyond the tolerance the exact distance does not matter
    close = 0
    for points, other in ((pred_xyz, target_xyz), (target_xyz, pred_xyz)):
        distance = KDTree(other, leafsize=32).query(points, k=1, distance_upper_bound=bound)[0]
        close += int((distance.astype(np.float32) <= np.float32(tolerance_mm)).sum())  # float32, as MONAI
    return float(np.float32(close) / np.float32(len(pred_xyz) + len(target_xyz)))


def monai_nsd(pred: np.ndarray, target: np.ndarray, spacing, tolerance_mm: float = 2.0) -> float:
    """MONAI's ``compute_surface_dice`` on the same crop as ``nsd`` (the reference ``nsd`` is checked against)."""
    pred, target = pred > 0, target > 0
    margin = [int(np.ceil(tolerance_mm / s)) + 2 for s in spacing]
    box = bounding_box(pred | target, margin)
    p = torch.from_numpy(pred[box])[None, None].float()
    t = torch.from_numpy(target[box])[None, None].float()
    with warnings.catch_warnings():  # MONAI 1.5 warns about one of its own internal arguments on every call
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_surface_dice(p, t, class_thresholds=[tolerance_mm], include_background=True,
                                     spacing=[float(s) for s in spacing])
    return float(value.reshape(-1)[0])

