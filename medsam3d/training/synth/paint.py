"""A scene's regions -> an image: CT in Hounsfield units or MR on an arbitrary positive scale.

Each region gets a mean (CT: its tissue's HU range, contrast phase included; MR: a random contrast per tissue, or
per region as in SynthSeg) and a texture (Perlin-like noise, fine and coarse mixed per region). Then partial
volume (a blur), a thick-slice resampling along one random axis, MR's smooth bias field, and scanner noise.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .fields import fractal, upsample, white_noise
from .scene import Scene
from .tissues import CT_TEXTURE, ct_mean

PHASES = ("none", "arterial", "venous")


def _means_ct(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """-> (mean HU, texture sd HU) per region."""
    phase = PHASES[int(rng.integers(len(PHASES)))]
    n = len(scene.tissue)
    mean, tex = np.empty(n, np.float32), np.empty(n, np.float32)
    for r, (tissue, hu) in enumerate(zip(scene.tissue, scene.hu)):
        measured = np.isfinite(hu) and rng.random() < 0.5  # the structure's own HU in its source scan
        mean[r] = hu + rng.normal(0, 15) if measured else ct_mean(tissue, phase, rng)
        tex[r] = CT_TEXTURE[tissue] * rng.uniform(0.5, 1.5)
    return mean, tex


def _means_mr(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """-> (mean, texture sd) per region on a [0, 1] scale; air stays dark. Objects differ from the body's mean
    by at least 0.08, so a target is never invisible against what surrounds most of it."""
    per_tissue = {t: rng.uniform(0.05, 1.0) for t in sorted(set(scene.tissue))}
    independent = rng.random() < 0.5  # SynthSeg: every region its own random contrast
    n = len(scene.tissue)
    mean = np.empty(n, np.float32)
    body = None
    objects = set(scene.objects)
    for r, (tissue, label) in enumerate(zip(scene.tissue, scene.label_of)):
        if tissue == "air" or tissue in ("lung", "airway", "gas") and rng.random() < 0.8:
            mean[r] = rng.uniform(0.0, 0.04)
            continue
        m = rng.uniform(0.05, 1.0) if independent else per_tissue[tissue] + rng.normal(0, 0.04)
        if label in objects and body is not None and abs(m - body) < 0.08:
            m = body + np.sign(m - body + 1e-6) * rng.uniform(0.08, 0.4)
        mean[r] = np.clip(m, 0.02, 1.2)
        if label == 1:
            body = mean[r]
    tex = (rng.uniform(0.0, 0.07, n) * np.maximum(mean, 0.1)).astype(np.float32)
    return mean, tex


def thick_slices(image: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Average into slices ``factor`` voxels thick along ``axis``, then interpolate back (a thick-slice scan
    resampled to isotropic)."""
    size = image.shape
    low = list(size)
    low[axis] = max(2, int(round(size[axis] / factor)))
    x = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    x = F.interpolate(x, size=tuple(low), mode="area")
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)[0, 0].numpy()


def paint(scene: Scene, modality: str, rng: np.random.Generator, thick_slice_prob: float = 0.4) -> np.ndarray:
    """-> (size, size, size) float32: HU for "ct", arbitrary positive scale for "mr"."""
    s = scene.size
    h = (s + 1) // 2
    mean, tex = (_means_ct if modality == "ct" else _means_mr)(scene, rng)
    mix = rng.uniform(0, 1, len(mean)).astype(np.float32)  # share of fine (vs coarse) texture per region
    # texture is made at half size (its finest octave is 2 voxels anyway), with each region's amplitude taken from
    # every other voxel, then upsampled once
    fine = fractal(h, rng, cells=(8, 16, 32), persistence=0.7)
    coarse = fractal(h, rng, cells=(2, 4, 8), work=max(h // 2, 8))
    half = scene.regions[::2, ::2, ::2]
    texture = (tex * mix)[half] * fine + (tex * (1 - mix))[half] * coarse
    image = mean[scene.regions] + upsample(texture, (s,) * 3)
    thick = 2 if rng.random() < 0.6 else int(rng.integers(2))  # most scans are axial stacks
    thick = thick if rng.random() < thick_slice_prob else -1
    kernel = np.exp(-0.5 * (np.arange(-2, 3) / rng.uniform(0.4, 1.0)) ** 2)  # partial volume: 5-tap Gaussian
    for axis in range(3):
        if axis != thick:  # the thick-slice axis is blurred by its own averaging
            image = ndimage.correlate1d(image, kernel / kernel.sum(), axis=axis, mode="nearest")
    if thick >= 0:
        image = thick_slices(image, thick, rng.uniform(1.5, 4.0))
    if modality == "ct":
        image += rng.uniform(2.0, 30.0) * white_noise(s, rng)
        return image.astype(np.float32)
    # smooth multiplicative bias field: a product of three smooth 1D profiles (no full-size field to upsample)
    profiles = [np.exp(upsample(rng.normal(0, rng.uniform(0.0, 0.15), (1, 1, 4)).astype(np.float32), (1, 1, s))[0, 0])
                for _ in range(3)]
    image *= (profiles[0][:, None] * profiles[1][None, :])[:, :, None]
    image *= profiles[2]
    image = np.abs(image + rng.uniform(0.003, 0.04) * white_noise(s, rng))
    return (image * rng.uniform(50.0, 2000.0)).astype(np.float32)
