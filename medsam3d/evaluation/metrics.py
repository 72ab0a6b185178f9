"""Dice and normalised surface Dice (NSD) on the scan's own grid, via MONAI."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.metrics import compute_surface_dice


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """2|P n T| / (|P| + |T|); 1.0 when both are empty."""
    pred, target = pred > 0, target > 0
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, target).sum() / total)


def nsd(pred: np.ndarray, target: np.ndarray, spacing, tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (MONAI), with the voxel ``spacing`` of the arrays' axes."""
    pred, target = pred > 0, target > 0
    if not pred.any() and not target.any():
        return 1.0
    if not pred.any() or not target.any():
        return 0.0
    # crop to the union's bounding box (plus the tolerance) so the distance transforms stay small
    where = np.argwhere(pred | target)
    margin = [int(np.ceil(tolerance_mm / s)) + 2 for s in spacing]
    lo = np.maximum(where.min(0) - margin, 0)
    hi = np.minimum(where.max(0) + margin + 1, pred.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    p = torch.from_numpy(pred[box])[None, None].float()
    t = torch.from_numpy(target[box])[None, None].float()
    with warnings.catch_warnings():  # MONAI 1.5 warns about one of its own internal arguments on every call
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_surface_dice(p, t, class_thresholds=[tolerance_mm], include_background=True,
                                     spacing=[float(s) for s in spacing])
    return float(value.reshape(-1)[0])
