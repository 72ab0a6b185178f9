"""What the protocol evaluates: the model (through ``Segmenter``) and two classical baselines, one interface.

Both baselines see exactly the clicks the model sees, negatives included, and work in a box sized in millimetres
around the positive clicks, at a bounded resolution (``regions``), so that a sub-millimetre CT costs them no more
than a 1.5 mm one. Their parameters were tuned on training cases only (``scripts/tune_baselines.py``); the values
and the reasons are in ``protocol.BASELINES``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..io import Volume
from .regions import Region, ball, block_mean, region_around, upsample_linear


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



class _Baseline:
    """Shared by the baselines: the box around the positive clicks, its coarse image, the way back."""

    margin_mm: float
    spacing_mm: float
    max_voxels: int

    def reset(self, volume: Volume) -> None:
        self.volume = volume

    def start_target(self) -> None:
        pass

    def predict(self, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        out = np.zeros(self.volume.shape, dtype=bool)
        points, labels = np.asarray(points, dtype=np.float64).reshape(-1, 3), np.asarray(labels).reshape(-1)
        positive, negative = points[labels == 1], points[labels != 1]
        if not len(positive):
            return out
        region = region_around(positive, self.volume.shape, self.volume.spacing, self.margin_mm, self.spacing_mm,
                               self.max_voxels)
        image = block_mean(self.volume.array[region.box], region.factor)  # (m0, m1, m2) float32
        negative = negative[region.inside(negative)]  # outside the box is background anyway
        inside = self.segment(image, region, region.to_coarse(positive), region.to_coarse(negative))
        out[region.box] = upsample_linear(inside, region.factor, region.hi - region.lo) > 0.5
        return out

    def segment(self, image: np.ndarray, region: Region, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
        """Coarse image (m0, m1, m2), clicks as (N, 3) coarse voxels -> (m0, m1, m2) float, > 0.5 inside."""
        raise NotImplementedError


class RegionGrowing(_Baseline):
    """Region growing from each positive click, negatives cutting off what they touch.

    Works on voxels about ``spacing_mm`` wide, each click within ``margin_mm`` of itself. The noise
    level is measured once, around the first click (the target's deepest point): the robust standard deviation
    (1.4826 x median absolute deviation) of a ``seed_radius_mm`` ball. Each positive click then grows its own
    region (SimpleITK ``ConnectedThreshold``): the voxels connected to it within ``multiplier`` noise levels of
    the median around it. A corrective click on another part of the structure so adds that part at its own
    intensity, and a click on a border cannot widen the range the others grow with. The prediction is the
    union, its enclosed holes filled. Negative clicks inside it compete with the positive ones for it (a
    watershed on the depth inside the region, from both kinds of click), so the cut falls on the narrowest neck
    between them, where a leak joins the structure; what the negatives win is dropped.

    Defaults, tuned on training CT (``protocol.BASELINES`` has the numbers): multiplier 3 (narrower ranges leave
    organs in pieces, wider ones leak), margin 30 mm (one click leaks less far; corrective clicks widen the
    box), 1.5 mm voxels (3 mm loses thin structures).
    """

    name = "region_growing"

    def __init__(self, multiplier: float = 3.0, margin_mm: float = 30.0, spacing_mm: float = 1.5,
                 seed_radius_mm: float = 3.0, max_voxels: int = 160 ** 3) -> None:
        self.multiplier, self.margin_mm, self.spacing_mm = multiplier, margin_mm, spacing_mm
        self.seed_radius_mm, self.max_voxels = seed_radius_mm, max_voxels

    def segment(self, image, region, positive, negative):
        kernel = ball(self.seed_radius_mm / region.spacing)
        around = [_values(image, kernel, p) for p in positive]
        noise = _noise(around[0], image)
        reach = np.ceil(self.margin_mm / region.spacing).astype(int)  # coarse voxels a click may grow, per axis
        grown = np.zeros(image.shape, dtype=bool)
        for p, values in zip(positive, around):
            centre = float(np.median(values))
            # each click grows within margin_mm of itself: one click's leak stays local
            lo, hi = np.maximum(p - reach, 0), np.minimum(p + reach + 1, image.shape)
            own = tuple(slice(a, b) for a, b in zip(lo, hi))
            sitk_image = sitk.GetImageFromArray(np.ascontiguousarray(image[own]))  # indexed (k, j, i) there
            piece = sitk.ConnectedThreshold(sitk_image, seedList=[tuple(int(c) for c in (p - lo)[::-1])],
                                            lower=float(centre - self.multiplier * noise),
                                            upper=float(centre + self.multiplier * noise), replaceValue=1)
            grown[own] |= sitk.GetArrayViewFromImage(piece) > 0
        grown = ndimage.binary_fill_holes(grown)
        negative = [q for q in negative if grown[tuple(q)]]
        if negative:
            grown = _cut(grown, positive, np.asarray(negative), region.spacing)
        return grown.astype(np.float32)


def _values(image: np.ndarray, kernel: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The image's values under ``kernel`` (a bool ball) centred at voxel ``p``, clipped at the border."""
    r = np.array(kernel.shape) // 2
    lo, hi = np.maximum(p - r, 0), np.minimum(p + r + 1, image.shape)
    window = image[tuple(slice(a, b) for a, b in zip(lo, hi))]
    return window[kernel[tuple(slice(a, b) for a, b in zip(lo - (p - r), hi - (p - r)))]]


def _cut(grown: np.ndarray, positive: np.ndarray, negative: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The part of ``grown`` (bool, m0 x m1 x m2) that the positive clicks win from the negative ones: a
    marker watershed on minus the depth (mm from the region's border), so the border between them runs along
    the region's narrowest neck."""
    from skimage.segmentation import watershed

    depth = ndimage.distance_transform_edt(grown, sampling=spacing)
    markers = np.zeros(grown.shape, dtype=np.int32)
    markers[tuple(negative.T)] = 2
    markers[tuple(positive.T)] = 1  # a click on both sides of the same coarse voxel counts as positive
    return watershed(-depth, markers, mask=grown) == 1


class RandomWalker(_Baseline):
    """The random walker (scikit-image, conjugate gradient with a Jacobi preconditioner) in the box of the
    positive clicks plus ``margin_mm``, on voxels about ``spacing_mm`` wide (coarser if the box would exceed
    ``max_voxels``). Seeds: around each click, the voxels within ``seed_radius_mm`` that look like it (within
    2 noise levels of the median there; the noise measured as for region growing) are object (positive click)
    or background (negative click); the box's faces are background too, except where the box meets the scan's
    own border. Inside is where the object's probability exceeds 1/2, interpolated linearly back onto the
    scan's grid. (A one-voxel seed holds too little of a 3D object: the walker's potential falls off as 1/r
    around it.)

    Defaults, tuned on training CT (``protocol.BASELINES`` has the numbers): beta 8000 on the z-scored box (only
    so large a beta turns the small contrasts between soft-tissue organs into borders), margin 50 mm (wider
    boxes put small structures on a few coarse voxels), 6 mm seeds, at most 48^3 voxels (~0.3 s a click).
    """

    name = "random_walker"

    def __init__(self, margin_mm: float = 50.0, spacing_mm: float = 2.0, beta: float = 8000.0,
                 seed_radius_mm: float = 6.0, max_voxels: int = 48 ** 3, tol: float = 1e-3) -> None:
        self.margin_mm, self.spacing_mm, self.beta = margin_mm, spacing_mm, beta
        self.seed_radius_mm, self.max_voxels, self.tol = seed_radius_mm, max_voxels, tol

    def segment(self, image, region, positive, negative):
        from skimage.segmentation import random_walker

        seeds = np.zeros(image.shape, dtype=np.int32)  # 0 unknown, 1 object, 2 background
        edges = region.on_scan_edge(self.volume.shape)
        if all(all(e) for e in edges):  # the box is the whole scan: its border is all there is to say outside
            edges = [(False, False)] * 3
        for axis, flags in enumerate(edges):
            for side, at_edge in zip((0, -1), flags):
                if not at_edge:
                    index = [slice(None)] * 3
                    index[axis] = side
                    seeds[tuple(index)] = 2
        kernel = ball(self.seed_radius_mm / region.spacing)
        noise = _noise(_values(image, kernel, positive[0]), image)
        for points, value in ((negative, 2), (positive, 1)):  # positives last: they win a shared voxel
            for p in points:
                _stamp(seeds, kernel, p, value, image, 2.0 * noise)
        if not (seeds == 2).any():
            return np.ones(image.shape, dtype=np.float32)
        # z-scored: scikit-image divides squared gradients by the data's standard deviation (not its square), so
        # on raw Hounsfield units every edge would be a wall (weight ~1e-10) and the solver would crawl
        image = (image - image.mean()) / (image.std() + 1e-6)
        prob = random_walker(image, seeds, beta=self.beta, mode="cg_j", tol=self.tol, spacing=tuple(region.spacing),
                             return_full_prob=True)
        return prob[0].astype(np.float32)  # probability of label 1, the object


def _noise(values: np.ndarray, image: np.ndarray) -> float:
    """Robust standard deviation (1.4826 x median absolute deviation) of ``values``; a noiseless image still
    gets a small positive one."""
    noise = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    return max(noise, 1e-3 * float(np.ptp(image)), 1e-6)


def _stamp(array: np.ndarray, kernel: np.ndarray, p: np.ndarray, value: int, image: np.ndarray,
           within: float) -> None:
    """array[kernel centred at p] = value where the image is within ``within`` of its median there (clipped at
    the array's border); the voxel p itself always."""
    r = np.array(kernel.shape) // 2
    lo, hi = np.maximum(p - r, 0), np.minimum(p + r + 1, array.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    k = kernel[tuple(slice(a, b) for a, b in zip(lo - (p - r), hi - (p - r)))]
    like = np.abs(image[box] - np.median(image[box][k])) <= within
    array[box][k & like] = value
    array[tuple(p)] = value
