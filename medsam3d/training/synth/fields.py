"""Random fields: coarse random grids upsampled (trilinear, through torch: 5-10x faster than scipy.ndimage.zoom
on one core), summed over octaves for Perlin-like texture; smooth displacement fields; white noise."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def upsample(grid: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(C, a, b, c) or (a, b, c) float -> same leading axes, spatial ``size``, trilinear (cell-centred)."""
    x = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))
    lead = x.dim() == 3
    x = x[None, None] if lead else x[None]
    out = F.interpolate(x, size=tuple(int(s) for s in size), mode="trilinear", align_corners=False)
    return (out[0, 0] if lead else out[0]).numpy()


def fractal(size: int, rng: np.random.Generator, cells: Sequence[int] = (4, 8, 16, 32), persistence: float = 0.6,
            work: int | None = None) -> np.ndarray:
    """(size,)*3 float32 noise, zero mean, unit sd: random grids of ``cells`` per axis, upsampled and summed with
    weights persistence**octave (coarse octaves dominate). Octaves are summed at ``work`` (default size//2)."""
    work = work or max(size // 2, max(cells))
    acc = np.zeros((work,) * 3, dtype=np.float32)
    for octave, n in enumerate(cells):
        acc += persistence ** octave * upsample(rng.standard_normal((n, n, n), dtype=np.float32), (work,) * 3)
    out = upsample(acc, (size,) * 3) if work != size else acc
    out -= out.mean()
    out /= max(float(out.std()), 1e-6)
    return out


def box_axes(lo: Sequence[int], hi: Sequence[int], step: int) -> list[np.ndarray]:
    """Scene coordinates sampled over the box lo..hi-1: every voxel (step 1) or every other one from lo, one past
    the end if needed (step 2), as ``upsample_box`` expects."""
    if step == 1:
        return [np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)]
    return [a + 2 * np.arange((b - a + 1) // 2 + 1, dtype=np.float32) for a, b in zip(lo, hi)]


def upsample_box(coarse: np.ndarray, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """A field sampled on ``box_axes(lo, hi, 2)`` -> every voxel of the box (trilinear, exact at the samples)."""
    x = torch.from_numpy(np.ascontiguousarray(coarse, dtype=np.float32))[None, None]
    full = F.interpolate(x, size=tuple(2 * n - 1 for n in coarse.shape), mode="trilinear", align_corners=True)
    return full[0, 0, : hi[0] - lo[0], : hi[1] - lo[1], : hi[2] - lo[2]].numpy()


class Displacement:
    """A smooth random displacement (voxels, each component with about ``sd`` spread) over a size^3 scene, held at
    half resolution: it varies over ~size/cells voxels, so reading it per 2-voxel block moves a boundary by
    a fraction of a voxel, and the scene never pays for a full-resolution 3-channel field."""

    def __init__(self, size: int, rng: np.random.Generator, sd: float, cells: int = 5) -> None:
        self.half = upsample(rng.normal(0.0, sd, (3, cells, cells, cells)).astype(np.float32), ((size + 1) // 2,) * 3)

    def at(self, axes: Sequence[np.ndarray]) -> np.ndarray:
        """(3, len(x), len(y), len(z)) displacement at the grid of scene coordinates ``axes`` (x, y, z)."""
        n = self.half.shape[1]
        ix, iy, iz = (np.clip(a.astype(int) // 2, 0, n - 1) for a in axes)
        return self.half[:, ix[:, None, None], iy[None, :, None], iz[None, None, :]]


def smooth_grid(cells: int, rng: np.random.Generator, work: int = 24, channels: int = 0) -> np.ndarray:
    """Random values on a cells^3 lattice, cubic-spline interpolated onto work^3 (float32, sd about 1; with
    ``channels`` a leading axis of that many). Trilinear upsampling of the coarse lattice itself would give
    level sets made of flat facets a lattice cell wide; this leaves facets of size/work voxels only."""
    lead = (channels,) if channels else ()
    coarse = rng.standard_normal(lead + (cells,) * 3, dtype=np.float32)
    zoom = (1,) * len(lead) + (work / cells,) * 3
    return ndimage.zoom(coarse, zoom, order=3, mode="mirror", grid_mode=True).astype(np.float32)


def box_noise(shape: Sequence[int], rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """Low-frequency noise over a box of ``shape`` (float32, sd about 1): for wobbly surfaces."""
    return upsample(smooth_grid(cells, rng, work=4 * cells), shape)


_NOISE: dict[int, np.ndarray] = {}


def white_noise(size: int, rng: np.random.Generator, margin: int = 32) -> np.ndarray:
    """(size,)*3 standard normal noise (a float32 view): a window of one fixed (size + margin)^3 block per process,
    at a random offset, axis order and flips. As good as a fresh draw for a model to learn from (33^3 offsets x 48
    orientations), at a tenth of the cost of drawing 2M normals."""
    block = _NOISE.get(size)
    if block is None:
        block = _NOISE[size] = np.random.default_rng(20251201).standard_normal((size + margin,) * 3, dtype=np.float32)
    o = rng.integers(0, margin + 1, 3)
    view = block[o[0]:o[0] + size, o[1]:o[1] + size, o[2]:o[2] + size].transpose(rng.permutation(3))
    return view[tuple(slice(None, None, -1) if f else slice(None) for f in rng.random(3) < 0.5)]
