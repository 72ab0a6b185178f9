"""What the protocol evaluates: the model (through ``Segmenter``) and two classical baselines, one interface.

Baselines see exactly the same clicks as the model:
* region growing (SimpleITK ``ConfidenceConnected``) seeded by the positive clicks (it has no use for negatives);
* the random walker (scikit-image) with positive clicks as object seeds and negative clicks plus the faces of a
  box around the clicks as background seeds, run inside that box.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import SimpleITK as sitk

from ..io import Volume


class Method(Protocol):
    name: str

    def reset(self, volume: Volume) -> None: ...  # a new scan

    def start_target(self) -> None: ...  # a new target: forget the previous prediction

    def predict(self, points: np.ndarray, labels: np.ndarray) -> np.ndarray: ...  # clicks (ijk) -> bool mask


class ModelMethod:
    def __init__(self, segmenter, name: str) -> None:
        self.segmenter, self.name = segmenter, name
        self.last_result = None  # the Segmenter's Result for the latest click (windows, IoU; probes read it)

    def reset(self, volume: Volume) -> None:
        self.segmenter.set_volume(volume)

    def start_target(self) -> None:
        self.segmenter.forget_previous()

    def predict(self, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        refine = len(points) > 1  # the previous click's low-res logits go back in as the mask prompt
        self.last_result = self.segmenter.predict(points=points.tolist(), labels=labels.tolist(), refine=refine)
        return self.last_result.mask.array > 0


class RegionGrowing:
    name = "region_growing"

    def __init__(self, multiplier: float = 2.5, iterations: int = 3, radius: int = 2) -> None:
        self.multiplier, self.iterations, self.radius = multiplier, iterations, radius

    def reset(self, volume: Volume) -> None:
        self.volume = volume
        self.image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)

    def start_target(self) -> None:
        pass

    def predict(self, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        seeds = [tuple(int(round(c)) for c in p) for p, lab in zip(points, labels) if lab == 1]
        if not seeds:
            return np.zeros(self.volume.shape, dtype=bool)
        grown = sitk.ConfidenceConnected(self.image, seedList=seeds, numberOfIterations=self.iterations,
                                         multiplier=self.multiplier, initialNeighborhoodRadius=self.radius,
                                         replaceValue=1)
        return sitk.GetArrayFromImage(grown).transpose(2, 1, 0) > 0


class RandomWalker:
    name = "random_walker"

    def __init__(self, margin_mm: float = 40.0, max_side: int = 96, beta: float = 130.0) -> None:
        self.margin_mm, self.max_side, self.beta = margin_mm, max_side, beta

    def reset(self, volume: Volume) -> None:
        self.volume = volume
        self.data = volume.array.astype(np.float32)

    def start_target(self) -> None:
        pass

    def predict(self, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        from skimage.segmentation import random_walker

        out = np.zeros(self.volume.shape, dtype=bool)
        positive = points[labels == 1]
        if not len(positive):
            return out
        margin = np.ceil(self.margin_mm / self.volume.spacing).astype(int)
        centre = np.round(positive.mean(0)).astype(int)
        half = np.minimum(np.ceil((positive.max(0) - positive.min(0)) / 2).astype(int) + margin, self.max_side // 2)
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, self.volume.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        crop = self.data[box]
        crop = (crop - crop.mean()) / (crop.std() + 1e-6)
        seeds = np.zeros(crop.shape, dtype=np.int32)
        for axis in range(3):  # the box's faces are background, unless the box touches the scan's edge there
            for side, at_edge in ((0, lo[axis] == 0), (-1, hi[axis] == self.volume.shape[axis])):
                if not at_edge:
                    index = [slice(None)] * 3
                    index[axis] = side
                    seeds[tuple(index)] = 2
        for p, lab in zip(points, labels):
            q = np.round(p).astype(int) - lo
            if np.all(q >= 0) and np.all(q < crop.shape):
                seeds[tuple(slice(max(c - 1, 0), c + 2) for c in q)] = 1 if lab == 1 else 2
        if not (seeds == 2).any():
            return out
        result = random_walker(crop, seeds, beta=self.beta, mode="cg_j", spacing=tuple(self.volume.spacing))
        out[box] = result == 1
        return out
