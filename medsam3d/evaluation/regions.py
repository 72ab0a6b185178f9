"""Where the classical baselines work: a box of the scan sized in millimetres around the clicks, at a bounded
resolution (block means of whole voxels), and the way back onto the scan's grid (linear interpolation).

All arrays are in the scan's index order (i, j, k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Region:
    lo: np.ndarray  # (3,) first scan voxel of the box
    hi: np.ndarray  # (3,) one past the last
    factor: np.ndarray  # (3,) scan voxels per coarse voxel along each axis
    spacing: np.ndarray  # (3,) mm of a coarse voxel

    @property
    def box(self) -> tuple[slice, slice, slice]:
        return tuple(slice(int(a), int(b)) for a, b in zip(self.lo, self.hi))

    @property
    def coarse_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in -(-(self.hi - self.lo) // self.factor))

    def to_coarse(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) scan voxels -> (N, 3) coarse voxels (clipped into the region)."""
        q = np.floor((np.asarray(points, dtype=np.float64) - self.lo + 0.5) / self.factor).astype(int)
        return np.clip(q, 0, np.asarray(self.coarse_shape) - 1)

    def inside(self, points: np.ndarray) -> np.ndarray:
        """(N,) bool: which scan voxels fall in the box."""
        p = np.round(np.asarray(points, dtype=np.float64)).astype(int)
        return np.all((p >= self.lo) & (p < self.hi), axis=1)

    def on_scan_edge(self, shape) -> list[tuple[bool, bool]]:
        """Per axis: (low face, high face) lies on the scan's own border."""
        return [(self.lo[a] == 0, self.hi[a] == shape[a]) for a in range(3)]


def region_around(points: np.ndarray, shape, spacing, margin_mm: float, spacing_mm: float,
                  max_voxels: int) -> Region:
    """The box spanning ``points`` (N, 3 scan voxels) plus ``margin_mm`` on every side, clipped to the scan, with
    coarse voxels of whole scan voxels about ``spacing_mm`` wide (never finer than the scan), coarser still when
    the box would exceed ``max_voxels``."""
    spacing = np.asarray(spacing, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    margin = np.ceil(margin_mm / spacing)
    lo = np.clip(np.floor(points.min(0) - margin), 0, None).astype(int)
    hi = np.minimum(np.ceil(points.max(0) + margin) + 1, shape).astype(int)
    factor = np.maximum(np.round(spacing_mm / spacing), 1).astype(int)
    while np.prod(-(-(hi - lo) // factor)) > max_voxels:  # coarser along the finest axes first
        finest = np.flatnonzero(spacing * factor == (spacing * factor).min())
        factor[finest] += 1
    return Region(lo, hi, factor, spacing * factor)


def block_mean(array: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """(n0, n1, n2) -> (ceil(n0/f0), ..) means of f0 x f1 x f2 blocks (edge values repeat to fill the last block)."""
    f = [int(x) for x in factor]
    pad = [(0, -n % k) for n, k in zip(array.shape, f)]
    if any(p[1] for p in pad):
        array = np.pad(array, pad, mode="edge")
    m = [n // k for n, k in zip(array.shape, f)]
    return array.reshape(m[0], f[0], m[1], f[1], m[2], f[2]).mean(axis=(1, 3, 5), dtype=np.float32)


def upsample_linear(coarse: np.ndarray, factor: np.ndarray, shape) -> np.ndarray:
    """Block-mean grid (m0, m1, m2) -> (n0, n1, n2) scan voxels, separable linear interpolation between the
    coarse voxels' centres (constant beyond the outermost ones). float32."""
    out = coarse.astype(np.float32, copy=False)
    for axis, (n, f) in enumerate(zip(shape, factor)):
        m = out.shape[axis]
        pos = np.clip((np.arange(n) - (f - 1) / 2.0) / f, 0, m - 1)  # scan voxel -> coarse coordinate
        i0 = np.floor(pos).astype(int)
        i1 = np.minimum(i0 + 1, m - 1)
        w = (pos - i0).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        out = out.take(i0, axis=axis) * (1 - w) + out.take(i1, axis=axis) * w
    return out


def ball(radius_vox: np.ndarray) -> np.ndarray:
    """A bool ellipsoid with the given radii in voxels per axis (at least one voxel)."""
    r = np.maximum(np.asarray(radius_vox, dtype=np.float64), 0.5)
    n = np.floor(r).astype(int)
    grid = np.ogrid[tuple(slice(-k, k + 1) for k in n)]
    return sum((g / rr) ** 2 for g, rr in zip(grid, r)) <= 1.0
