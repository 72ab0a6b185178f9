"""Bank shapes into a scene: a random affine (rotation, anisotropic scale, flips) and the scene's smooth
displacement field, applied in one resampling of the shape's mask, only over the box it lands in."""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from .fields import Displacement, box_axes, upsample_box
from .scene import Piece
from .shapes import rotation

BIG_BOX = 250_000  # boxes with more voxels are resampled at half resolution, then upsampled (4-8x cheaper)


def random_affine(rng: np.random.Generator, rotate_deg: float, scale: tuple[float, float], anisotropy: float,
                  flip: bool = True) -> np.ndarray:
    """(3, 3) shape -> scene matrix: R @ diag(overall scale * per-axis factor * +-1)."""
    factors = rng.uniform(*scale) * rng.uniform(1 - anisotropy, 1 + anisotropy, 3)
    if flip:
        factors *= np.where(rng.random(3) < 0.5, -1.0, 1.0)
    return rotation(rng, rotate_deg) @ np.diag(factors)


def warp(mask: np.ndarray, affine: np.ndarray, src_centre: np.ndarray, out_centre: np.ndarray, size: int,
         displacement: Optional[Displacement] = None, tissue: str = "organ", margin: float = 0.0) -> Optional[Piece]:
    """Shape ``mask`` (uint8 box) with its voxel ``src_centre`` sent to scene voxel ``out_centre`` by ``affine``;
    scene voxel y samples the shape at inv(affine) (y + displacement(y) - out_centre) + src_centre."""
    corners = np.array([[a, b, c] for a in (0, mask.shape[0] - 1) for b in (0, mask.shape[1] - 1)
                        for c in (0, mask.shape[2] - 1)], dtype=float)
    ends = (corners - src_centre) @ affine.T + out_centre
    lo = np.maximum(np.floor(ends.min(0) - margin).astype(int), 0)
    hi = np.minimum(np.ceil(ends.max(0) + margin).astype(int) + 1, size)
    if (hi - lo < 2).any():
        return None
    step = 2 if np.prod(hi - lo) > BIG_BOX else 1
    axes = box_axes(lo, hi, step)
    d = [(axes[k] - np.float32(out_centre[k]))[tuple(slice(None) if j == k else None for j in range(3))]
         for k in range(3)]  # (x, y, z) offsets from the centre, broadcastable
    if displacement is not None:
        u = displacement.at(axes)
        d = [u[k] + d[k] for k in range(3)]
    inv = np.linalg.inv(affine).astype(np.float32)
    coords = np.empty((3,) + tuple(len(a) for a in axes), dtype=np.float32)
    for k in range(3):
        coords[k] = inv[k, 0] * d[0] + inv[k, 1] * d[1] + inv[k, 2] * d[2] + np.float32(src_centre[k])
    occupancy = ndimage.map_coordinates(mask, coords, output=np.float32, order=1, mode="constant", cval=0.0,
                                        prefilter=False)
    if step > 1:
        occupancy = upsample_box(occupancy, lo, hi)
    inside = occupancy > 0.5
    if not inside.any():
        return None
    return Piece(lo, inside, tissue)


def cortex(piece: Piece, rng: np.random.Generator) -> Piece:
    """A bone's outer 1-2 voxels as a "cortex" part and the rest as "marrow" (CT's bright shell around cancellous
    bone)."""
    inner = ndimage.binary_erosion(piece.mask, iterations=int(rng.integers(1, 3)))
    piece.parts = [(~inner, "cortex")]
    piece.tissue = "marrow"
    return piece
