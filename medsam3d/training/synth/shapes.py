"""Procedural objects no label map holds: vessel trees, rib-like rods, curved sheets, blobs with rims and cores.

Each generator returns ``Piece``s in scene voxels (x, y, z); the scene clips them to the crop. Sizes are in
voxels of model space (1.5 mm).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.spatial.transform import Rotation

from .fields import box_axes, box_noise, upsample_box
from .scene import Piece


def rotation(rng: np.random.Generator, max_deg: float = 180.0) -> np.ndarray:
    """(3, 3) rotation: uniform over all orientations for max_deg >= 180, else Euler angles within +-max_deg."""
    if max_deg >= 180:
        return Rotation.random(random_state=rng).as_matrix()
    return Rotation.from_euler("xyz", rng.uniform(-max_deg, max_deg, 3), degrees=True).as_matrix()


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def stamp(points: np.ndarray, radii: np.ndarray, size: int, tissue: str) -> Optional[Piece]:
    """Balls of ``radii`` (n,) at ``points`` (n, 3) -> their union as a Piece (None if none is in the scene)."""
    keep = ((points + radii[:, None] > 0) & (points - radii[:, None] < size - 1)).all(1)
    points, radii = points[keep], radii[keep]
    if not len(points):
        return None
    lo = np.maximum(np.floor((points - radii[:, None]).min(0)).astype(int), 0)
    hi = np.minimum(np.ceil((points + radii[:, None]).max(0)).astype(int) + 1, size)
    mask = np.zeros(hi - lo, dtype=bool)
    for p, r in zip(points - lo, radii):
        a = np.maximum(np.floor(p - r).astype(int), 0)
        b = np.minimum(np.ceil(p + r).astype(int) + 1, mask.shape)
        dx, dy, dz = (np.arange(a[k], b[k]) - p[k] for k in range(3))
        mask[a[0]:b[0], a[1]:b[1], a[2]:b[2]] |= (dx[:, None, None] ** 2 + dy[None, :, None] ** 2
                                                 + dz[None, None, :] ** 2) <= r * r
    return Piece(lo, mask, tissue)


def tree(rng: np.random.Generator, size: int, tissue: str, start: Optional[np.ndarray] = None,
         radius: tuple[float, float] = (1.2, 5.0), depth: int = 2, max_points: int = 1500) -> Optional[Piece]:
    """A branching tube (vessel or airway tree): a trunk that wanders both ways from ``start``, tapering, with
    branches that leave at 25-75 degrees and are thinner and shorter."""
    start = rng.uniform(0.15, 0.85, 3) * size if start is None else np.asarray(start, dtype=float)
    direction = _unit(rng.normal(size=3))
    r0 = rng.uniform(*radius)
    curl = rng.uniform(0.02, 0.12)  # direction change per voxel travelled: straight aorta .. tortuous vessel
    stack = [(start, direction, r0, size * rng.uniform(0.5, 1.2), 0), (start, -direction, r0, size * 0.6, 0)]
    points, radii = [], []
    while stack and len(points) < max_points:
        p, d, r, length, level = stack.pop()
        travelled = 0.0
        while travelled < length and r >= 0.7 and len(points) < max_points:
            step = max(0.6, 0.5 * r)
            d = _unit(d + rng.normal(0, curl * step, 3))
            p = p + d * step
            if (p < -r).any() or (p > size + r).any():
                break
            travelled += step
            r *= 0.998 ** step
            points.append(p)
            radii.append(r)
            if level < depth and rng.random() < 0.03 * step:
                turn = _unit(np.cross(d, rng.normal(size=3)))  # perpendicular, random azimuth
                angle = np.deg2rad(rng.uniform(25, 75))
                stack.append((p.copy(), _unit(np.cos(angle) * d + np.sin(angle) * turn), r * rng.uniform(0.45, 0.8),
                              length * rng.uniform(0.3, 0.7), level + 1))
    if not points:
        return None
    return stamp(np.array(points), np.array(radii), size, tissue)


def rods(rng: np.random.Generator, size: int, tissue: str, count: Optional[int] = None) -> list[Piece]:
    """Thin curved rods, one or a parallel set of them (ribs, costal cartilage): elliptic arcs in a plane, each
    shifted along the plane's normal and slightly tilted out of it."""
    rot = rotation(rng)
    centre = rng.uniform(0.2, 0.8, 3) * size
    a, b = rng.uniform(25, 80, 2)
    t0 = rng.uniform(0, 2 * np.pi)
    t = t0 + np.linspace(0, np.deg2rad(rng.uniform(60, 170)), 200)
    count = int(rng.integers(1, 7)) if count is None else count
    spacing, radius, tilt = rng.uniform(8, 16), rng.uniform(1.2, 3.0), rng.uniform(-0.3, 0.3)
    pieces = []
    for i in range(count):
        w = (i - (count - 1) / 2) * spacing + rng.normal(0, 1) + tilt * a * (t - t0)
        scale = rng.uniform(0.9, 1.1)
        local = np.stack([a * scale * np.cos(t), b * scale * np.sin(t), w], 1) - [a * np.cos(t0), b * np.sin(t0), 0]
        points = centre + local @ rot.T
        step = np.linalg.norm(np.diff(points, axis=0), axis=1).mean()
        keep = slice(None, None, max(1, int(radius * 0.6 / max(step, 1e-6))))
        radii = radius * rng.uniform(0.85, 1.15) * np.ones(len(points))
        piece = stamp(points[keep], radii[keep], size, tissue)
        if piece is not None:
            pieces.append(piece)
    return pieces


def _frame(rot: np.ndarray, axes: list[np.ndarray], centre: np.ndarray) -> list[np.ndarray]:
    """Scene coordinate axes (x, y, z) -> the rotated frame's (u, v, w) = rot.T @ (p - centre), broadcast."""
    x, y, z = (a - np.float32(c) for a, c in zip(axes, centre))
    return [rot[0, k] * x[:, None, None] + rot[1, k] * y[None, :, None] + rot[2, k] * z[None, None, :]
            for k in range(3)]


def _clip_box(centre: np.ndarray, half: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, size)
    return lo, hi


def sheet(rng: np.random.Generator, size: int, tissue: str, thickness: tuple[float, float] = (1.5, 4.0),
          cortex: bool = False) -> Optional[Piece]:
    """A curved plate (fascia, cartilage, a skull-like bone plate): |w - h(u, v)| <= t/2 inside an ellipse of
    the (u, v) plane, h a bowl plus gentle waves. ``cortex``: its two surface layers as a separate part.
    Both terms are smooth, so large plates are evaluated every other voxel and interpolated."""
    rot = rotation(rng)
    centre = rng.uniform(0.2, 0.8, 3) * size
    a, b = rng.uniform(12, 42, 2)
    t = rng.uniform(*thickness)
    k1, k2 = rng.uniform(-0.025, 0.025, 2)
    amp, freq, phase = rng.uniform(0, 3, 2), rng.uniform(0.05, 0.2, 2), rng.uniform(0, 2 * np.pi, 2)
    depth = abs(k1) * a * a + abs(k2) * b * b + amp.sum() + t
    half = np.sqrt((rot[:, 0] * a) ** 2 + (rot[:, 1] * b) ** 2) + np.abs(rot[:, 2]) * depth + 2
    lo, hi = _clip_box(centre, half, size)
    if (hi - lo < 2).any():
        return None
    step = 2 if np.prod(hi - lo) > 30_000 else 1
    u, v, w = _frame(rot, box_axes(lo, hi, step), centre)
    gap = w - (k1 * u * u + k2 * v * v + amp[0] * np.sin(freq[0] * u + phase[0])
               + amp[1] * np.sin(freq[1] * v + phase[1]))  # signed distance (along w) from the mid-surface
    ellipse = (u / a) ** 2 + (v / b) ** 2
    if step == 2:
        gap, ellipse = upsample_box(gap, lo, hi), upsample_box(ellipse, lo, hi)
    off = np.abs(gap)
    mask = (ellipse <= 1) & (off <= t / 2)
    if not mask.any():
        return None
    parts = [(mask & (off > t / 2 - 1.2), "cortex")] if cortex and t >= 4 else []
    return Piece(lo, mask, tissue, parts)


def blob(rng: np.random.Generator, size: int, centre: np.ndarray, radii: np.ndarray, tissue: str,
         wobble: float = 0.15, lobes: int = 1, rim: Optional[str] = None,
         core: Optional[str] = None) -> Optional[Piece]:
    """An ellipsoid whose surface wobbles (union of ``lobes`` overlapping ones: organ-like), optionally with a
    ``rim`` shell of 1-3 voxels and a ``core`` (necrosis, a cyst's content) painted as their own tissues. The
    level function is smooth: blobs of radius >= 6 are evaluated every other voxel and interpolated."""
    centre, radii = np.asarray(centre, dtype=float), np.asarray(radii, dtype=float)
    parts = []
    for i in range(lobes):
        rot = rotation(rng)
        shift = rng.normal(0, 0.35, 3) * radii if i else np.zeros(3)
        r = radii * (rng.uniform(0.6, 1.0, 3) if i else 1.0)
        parts.append((rot, centre + shift, r))
    half = np.max([np.sqrt(((rot * r) ** 2).sum(1)) + np.abs(c - centre) for rot, c, r in parts], 0)
    lo, hi = _clip_box(centre, half * (1 + wobble) + 2, size)
    if (hi - lo < 1).any():
        return None
    step = 2 if radii.min() >= 6 else 1
    axes = box_axes(lo, hi, step)
    level = None
    for rot, c, r in parts:
        u, v, w = _frame(rot, axes, c)
        lobe = np.sqrt((u / r[0]) ** 2 + (v / r[1]) ** 2 + (w / r[2]) ** 2)
        level = lobe if level is None else np.minimum(level, lobe)
    level = level + wobble * box_noise(level.shape, rng, cells=int(rng.integers(3, 6)))
    if step == 2:
        level = upsample_box(level, lo, hi)
    mask = level < 1
    if not mask.any():
        return None
    extra = []
    if core is not None:
        extra.append((level < rng.uniform(0.3, 0.7), core))
    if rim is not None:
        extra.append((mask & (level >= 1 - rng.uniform(1.0, 3.0) / radii.mean()), rim))
    return Piece(lo, mask, tissue, extra)
