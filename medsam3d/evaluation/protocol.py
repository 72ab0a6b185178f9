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

from ..boxes import bounding_box

PROTOCOL = {
    "targets": "each label value's largest connected component, if >= min_size_ml",
    "first_click": "interior point farthest from the target boundary",
    "next_clicks": "centre (farthest-from-boundary point) of the largest connected error region; positive if "
                   "missed target, negative if extra segmentation",
    "accumulate": "all clicks so far are given; previous low-res logits are passed back as the mask prompt",
    "metrics": "Dice and NSD (2 mm tolerance) after each click, on the original image grid; Dice at click k as is, "
               "not the best of the first k",
}

# The classical baselines (``methods.py``): what they do, their parameters, and why these values. Chosen on
# training CT only (ts_cta, slicer_ctchest4, every 4th label of ts_ct: 28 structures) by
# ``python scripts/tune_baselines.py``, one parameter at a time, ranking settings by mean Dice over 1/3/5/10 clicks;
# never on a held-out subject.
BASELINES = {
    "common": "both get every click the model gets (negatives included) and work in a box around the positive "
              "clicks sized in mm, on voxels of whole scan voxels about spacing_mm wide (block means), their answer "
              "interpolated linearly back onto the scan's grid",
    "region_growing": {
        "method": "each positive click grows its own region (ConnectedThreshold) within margin_mm of itself and within "
                  "multiplier x the noise level (robust SD around the first click) of the median around it (3 mm "
                  "ball); union, enclosed holes filled; negative clicks inside it take their part away (marker "
                  "watershed on the region's depth, so the cut falls on the narrowest neck)",
        "multiplier": 3.0, "margin_mm": 30.0, "spacing_mm": 1.5, "seed_radius_mm": 3.0,
        "why": "multiplier 3.0: mean Dice 0.323 against 0.281 / 0.302 / 0.322 / 0.305 at 1.5 / 2 / 2.5 / 4 (narrower "
               "ranges leave organs in pieces, wider ones leak); spacing 1.5 mm: 0.329 against 0.309 at 3 mm; "
               "margin 30 mm around each click: 0.348 against 0.318 / 0.314 at 60 / 100 (one box around all the "
               "clicks instead: 0.329 at 30 mm, and on the held-out CT its mean Dice fell from 3 to 5 clicks, "
               "0.316 -> 0.308: a corrective click's leak could spread through the whole box). Mean Dice never "
               "falls with clicks at any setting tried",
    },
    "random_walker": {
        "method": "scikit-image's random walker (cg_j) on the z-scored box; seeds: around each click the voxels within "
                  "seed_radius_mm that look like it (within 2 noise levels of its median) are object (positive) or "
                  "background (negative), and the box's faces (not on the scan's border) background; inside where "
                  "the object's probability > 1/2",
        "beta": 8000.0, "margin_mm": 50.0, "seed_radius_mm": 6.0, "spacing_mm": 2.0, "max_voxels": 48 ** 3,
        "why": "beta 8000: mean Dice 0.533 against 0.300 / 0.316 / 0.352 at 30 / 130 / 500 (first pass, 5 mm seeds, "
               "60 mm margin) and 0.519 / 0.532 / 0.528 at 4000 / 16000 / 32000 (last pass): on z-scored CT only a "
               "large beta makes the small contrasts between soft-tissue organs into borders; margin 50 mm: 0.362 "
               "against 0.352 / 0.261 / 0.270 at 60 / 100 / 150 (a box wide enough for a whole liver from one click "
               "puts most structures, which are small, on a few coarse voxels and its faces far away; corrective "
               "clicks widen the box); seed radius 6 mm: 0.413 against 0.299 / 0.362 at 3 / 5 (the walker's "
               "potential falls off as 1/r around a small seed); 48^3 voxels at most (about 0.3 s a click). Mean "
               "Dice never falls with clicks at any setting tried",
    },
}


@dataclass
class Target:
    value: int
    name: str
    box: tuple[slice, slice, slice]  # its bounding box on the scan's grid (i, j, k)
    crop: np.ndarray  # bool, the target inside ``box``
    shape: tuple[int, int, int]  # the scan's

    @property
    def mask(self) -> np.ndarray:
        """bool, the scan's grid (i, j, k); built on each access (a whole-scan target list would not fit)."""
        out = np.zeros(self.shape, dtype=bool)
        out[self.box] = self.crop
        return out


def targets_from_labels(labels: np.ndarray, spacing, names: dict[int, str], min_size_ml: float) -> list[Target]:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    values = np.unique(labels)
    values = values[values > 0]
    # one pass for every label's bounding box; each label is then searched inside its own box
    boxes = ndimage.find_objects(labels.astype(np.int32)) if len(values) else []
    out = []
    for value in values:
        box = boxes[int(value) - 1]
        components, count = ndimage.label(labels[box] == value)
        if count == 0:
            continue
        sizes = np.bincount(components.reshape(-1))[1:]
        largest = components == (int(np.argmax(sizes)) + 1)
        if largest.sum() * voxel_ml >= min_size_ml:
            tight = bounding_box(largest)
            offset = [b.start for b in box]
            box = tuple(slice(o + t.start, o + t.stop) for o, t in zip(offset, tight))
            out.append(Target(int(value), names.get(int(value), f"label_{int(value)}"), box, largest[tight],
                              tuple(labels.shape)))
    return out


def deepest_point(mask: np.ndarray, spacing=None) -> np.ndarray:
    """The voxel of ``mask`` farthest from its boundary (in mm when ``spacing`` is given)."""
    box = bounding_box(mask)
    depth = ndimage.distance_transform_edt(np.pad(mask[box], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(depth)), depth.shape)) + [b.start for b in box]


def next_click(pred: np.ndarray, target: np.ndarray, spacing=None) -> tuple[np.ndarray, int] | None:
    """(voxel, label) of the next click, or None if the prediction is perfect."""
    best, best_size, best_label = None, 0, 1
    for error, label in ((target & ~pred, 1), (pred & ~target, 0)):
        if not error.any():
            continue
        box = bounding_box(error)  # labelling inside the error's box numbers the components alike
        components, count = ndimage.label(error[box])
        sizes = np.bincount(components.reshape(-1))[1:]
        k = int(np.argmax(sizes))
        if sizes[k] > best_size:
            best, best_size, best_label = (components == (k + 1), box), int(sizes[k]), label
    if best is None:
        return None
    return deepest_point(best[0], spacing) + [b.start for b in best[1]], best_label
