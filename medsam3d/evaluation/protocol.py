"""The click protocol, written once and used for the model and every baseline alike.

* Targets: every label value of a label map, as its largest connected component, when at least
  ``min_size_ml`` in volume.
* Click 1: the target's interior point farthest from its boundary.
* Click k > 1: the centre (point farthest from its boundary) of the largest connected error region of the
  prediction after click k - 1; positive where target was missed, negative where extra was segmented.
* Clicks accumulate; the previous low-res logits go back to the model as its mask prompt.
* Dice and NSD (2 mm) after each click, on the scan's own grid. Dice at click k is reported as it is (not the
  best of the first k clicks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

PROTOCOL = {
    "targets": "each label value's largest connected component, if >= min_size_ml",
    "first_click": "interior point farthest from the target boundary",
    "next_clicks": "centre (farthest-from-boundary point) of the largest connected error region; positive if "
                   "missed target, negative if extra segmentation",
    "accumulate": "all clicks so far are given; previous low-res logits are passed back as the mask prompt",
    "metrics": "Dice and NSD (2 mm tolerance) after each click, on the original image grid; Dice at click k as is, "
               "not the best of the first k",
}


@dataclass
class Target:
    value: int
    name: str
    mask: np.ndarray  # bool, the scan's grid (i, j, k)


def targets_from_labels(labels: np.ndarray, spacing, names: dict[int, str], min_size_ml: float) -> list[Target]:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    out = []
    for value in np.unique(labels):
        if value == 0:
            continue
        components, count = ndimage.label(labels == value)
        if count == 0:
            continue
        sizes = np.bincount(components.reshape(-1))[1:]
        largest = components == (int(np.argmax(sizes)) + 1)
        if largest.sum() * voxel_ml >= min_size_ml:
            out.append(Target(int(value), names.get(int(value), f"label_{int(value)}"), largest))
    return out


def deepest_point(mask: np.ndarray, spacing=None) -> np.ndarray:
    """The voxel of ``mask`` farthest from its boundary (in mm when ``spacing`` is given)."""
    where = np.argwhere(mask)
    lo, hi = where.min(0), where.max(0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    depth = ndimage.distance_transform_edt(np.pad(mask[box], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(depth)), depth.shape)) + lo


def next_click(pred: np.ndarray, target: np.ndarray, spacing=None) -> tuple[np.ndarray, int] | None:
    """(voxel, label) of the next click, or None if the prediction is perfect."""
    best, best_size, best_label = None, 0, 1
    for error, label in ((target & ~pred, 1), (pred & ~target, 0)):
        if not error.any():
            continue
        components, count = ndimage.label(error)
        sizes = np.bincount(components.reshape(-1))[1:]
        k = int(np.argmax(sizes))
        if sizes[k] > best_size:
            best, best_size, best_label = components == (k + 1), int(sizes[k]), label
    if best is None:
        return None
    return deepest_point(best, spacing), best_label
