"""Putting a label map on its image's exact grid: same grid, lossless re-indexing, or (allowed per source)
nearest-neighbour resampling; and the volumes and offsets the checks use."""

from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Same size, spacing, origin and direction (up to float noise)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=1e-5)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-5))


def grid_points_coincide(label: sitk.Image, image: sitk.Image, tol: float = 1e-3) -> bool:
    """True when every voxel centre of ``image`` is a voxel centre of ``label``'s (unbounded) grid and one voxel
    step maps to one voxel step (axes may be flipped or permuted): nearest-neighbour resampling is then a pure
    re-indexing, with no interpolation."""
    def to_label(index: tuple[int, int, int]) -> np.ndarray:
        return np.array(label.TransformPhysicalPointToContinuousIndex(image.TransformIndexToPhysicalPoint(index)))

    start = to_label((0, 0, 0))
    steps = np.abs([to_label(e) - start for e in ((1, 0, 0), (0, 1, 0), (0, 0, 1))])
    is_permutation = np.allclose(np.sort(steps, axis=1), [0, 0, 1], atol=tol) and np.allclose(steps.sum(0), 1, atol=tol)
    return bool(is_permutation and np.allclose(start, np.round(start), atol=tol))


def foreground_voxels(label: sitk.Image) -> int:
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(label)))


def match_label(label: sitk.Image, image: sitk.Image, allow_interpolation: bool = False
                ) -> tuple[Optional[sitk.Image], str]:
    """``label`` on ``image``'s exact grid -> (label or None when it cannot be matched safely, how)."""
    if same_grid(label, image):
        out = sitk.Image(label)
        out.CopyInformation(image)
        return out, "same grid"
    coincide = grid_points_coincide(label, image)
    if not (coincide or allow_interpolation):
        return None, "grids differ and their voxel centres do not coincide"
    out = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    if not coincide:
        return out, "nearest-neighbour resampling onto the image grid"
    lost = foreground_voxels(label) - foreground_voxels(out)
    if lost:
        return None, f"{lost} labelled voxels lie outside the image"
    return out, "lossless nearest-neighbour re-indexing (voxel centres coincide)"


def as_label_type(label: sitk.Image) -> sitk.Image:
    """uint8 when the values fit, else uint16."""
    top = int(sitk.GetArrayViewFromImage(label).max())
    if top > 65535:
        raise ValueError(f"label value {top} does not fit uint16")
    return sitk.Cast(label, sitk.sitkUInt8 if top <= 255 else sitk.sitkUInt16)


def ct_as_int16(image: sitk.Image) -> sitk.Image:
    """CT in int16 when its values are integers within int16's range (else unchanged)."""
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype == np.int16 or not np.issubdtype(array.dtype, np.integer):
        return image
    if array.min() < -32768 or array.max() > 32767:
        return image
    return sitk.Cast(image, sitk.sitkInt16)


def slab_offset(volume: sitk.Image, slab: sitk.Image) -> Optional[int]:
    """k when ``slab``'s voxels equal ``volume``'s slices k..k+n-1 (the last array axis), else None."""
    big, small = sitk.GetArrayViewFromImage(volume), sitk.GetArrayViewFromImage(slab)
    if big.shape[1:] != small.shape[1:]:
        return None
    return next((k for k in range(big.shape[0] - small.shape[0] + 1)
                 if np.array_equal(big[k:k + small.shape[0]], small)), None)


def volume_ml(label: sitk.Image, value: Optional[int] = None) -> float:
    """Volume of ``label == value`` (of all non-zero voxels when ``value`` is None) in ml."""
    array = sitk.GetArrayViewFromImage(label)
    count = np.count_nonzero(array if value is None else array == value)
    return float(count * np.prod(label.GetSpacing()) / 1000.0)


def grid_offset_voxels(label: sitk.Image, image: sitk.Image) -> float:
    """Largest distance, in ``label`` voxels along any axis, between a corner voxel centre of ``image`` and the
    same index of ``label`` (in physical space); inf when the sizes differ."""
    if label.GetSize() != image.GetSize():
        return float("inf")
    size = image.GetSize()
    corners = [(i, j, k) for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]
    return float(max(np.abs(np.subtract(
        label.TransformPhysicalPointToContinuousIndex(image.TransformIndexToPhysicalPoint(c)), c)).max()
        for c in corners))

