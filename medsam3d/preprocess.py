"""Between the scan's grid and the model's: crop windows in model space and paste-back (intensities: ``intensity``).

SAM-Med3D-family models were trained on crops made by resampling to 1.5 mm, reorienting to RAS+ and cropping
128^3, then z-normalising over voxels > 0, with tensor axes in canonical (x, y, z) order. A ``Window`` is such a
crop, placed anywhere in the world: axis 0 points to patient Right (-L), axis 1 to Anterior (-P), axis 2 to
Superior, with isotropic spacing. The user's image is resampled into it (never modified), and the model's
logits are resampled back onto the user's own grid, inside the window's footprint only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .io import Volume, ijk_from_sitk_array, sitk_array_from_ijk

RAS_DIRECTION_IN_LPS = np.diag([-1.0, -1.0, 1.0])  # columns: R, A, S expressed in LPS
# logits that stand for "certainly outside" / "certainly inside" the object (sigmoid: 2e-9 / 1 - 2e-9): where no
# prediction reaches, and the scale of a mask turned into a mask prompt
OUTSIDE_LOGIT = -20.0
INSIDE_LOGIT = 20.0


@dataclass(frozen=True)
class Window:
    """A size^3 crop of model space (RAS+, isotropic ``spacing``) centred on ``center_lps``."""

    center_lps: tuple[float, float, float]
    size: int = 128
    spacing: float = 1.5

    @property
    def origin_lps(self) -> np.ndarray:
        """LPS position of window voxel (0, 0, 0)."""
        half = (self.size - 1) / 2 * self.spacing
        return np.asarray(self.center_lps) - RAS_DIRECTION_IN_LPS @ np.full(3, half)

    def lps_to_voxel(self, lps: np.ndarray) -> np.ndarray:  # (..., 3) -> window voxel coordinates
        return (np.asarray(lps) - self.origin_lps) @ RAS_DIRECTION_IN_LPS / self.spacing

    def voxel_to_lps(self, voxel: np.ndarray) -> np.ndarray:
        return np.asarray(voxel) * self.spacing @ RAS_DIRECTION_IN_LPS.T + self.origin_lps

    def contains(self, lps: np.ndarray, margin: float = 0.0) -> bool:
        v = self.lps_to_voxel(np.atleast_2d(lps))
        return bool(((v >= margin) & (v <= self.size - 1 - margin)).all())

    def reference_image(self) -> sitk.Image:
        image = sitk.Image([self.size] * 3, sitk.sitkFloat32)
        image.SetSpacing([self.spacing] * 3)
        image.SetOrigin(tuple(float(x) for x in self.origin_lps))
        image.SetDirection(tuple(RAS_DIRECTION_IN_LPS.reshape(-1)))
        return image

    def footprint(self, volume: Volume, lo: tuple = (0, 0, 0), hi: tuple = None) -> tuple[slice, slice, slice]:
        """Index box of ``volume`` covered by window voxels ``lo``..``hi`` (default: all), clipped to the image."""
        hi = (self.size - 1,) * 3 if hi is None else hi
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])],
                           dtype=np.float64)
        ijk = volume.lps_to_ijk(self.voxel_to_lps(corners))
        lo = np.clip(np.floor(ijk.min(0)).astype(int), 0, volume.shape)
        hi = np.clip(np.ceil(ijk.max(0)).astype(int) + 1, 0, volume.shape)
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def crop_window(source: sitk.Image, window: Window, fill: float) -> np.ndarray:
    """Resample the scan into the window (linear); outside the scan = ``fill``. -> (size, size, size) float32."""
    resampled = sitk.Resample(source, window.reference_image(), sitk.Transform(), sitk.sitkLinear, float(fill),
                              sitk.sitkFloat32)
    return ijk_from_sitk_array(sitk.GetArrayFromImage(resampled))


def paste_back(logits: np.ndarray, window: Window, volume: Volume, outside: float = OUTSIDE_LOGIT,
               positive_only: bool = False) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Window logits (size^3, model space) -> logits on ``volume``'s own grid inside the window's footprint.

    Returns the index box and the float32 logits there (linear interpolation; ``outside`` beyond the window).
    ``positive_only`` shrinks the box to the footprint of the window voxels with logits > 0, padded by one voxel:
    any point outside it interpolates only non-positive values, so the thresholded mask is unchanged.
    """
    src_lo = np.zeros(3, dtype=int)  # the window voxels handed to the resampler: all, or the positive box
    if positive_only:
        inside = logits > 0
        spans = [np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        if not len(spans[0]):
            return tuple(slice(0, 0) for _ in range(3)), np.zeros((0, 0, 0), dtype=np.float32)
        src_lo = np.maximum([span[0] - 1 for span in spans], 0)
        src_hi = np.minimum([span[-1] + 1 for span in spans], window.size - 1)
        box = window.footprint(volume, tuple(src_lo), tuple(src_hi))
        # outside this box every window voxel is <= 0, and so is anything interpolated from them: cropping the
        # source to it leaves the thresholded mask unchanged and saves converting the whole window
        logits = logits[tuple(slice(a, b + 1) for a, b in zip(src_lo, src_hi))]
    else:
        box = window.footprint(volume)
    lo = np.array([s.start for s in box])
    size = [s.stop - s.start for s in box]
    if min(size) <= 0:
        return box, np.zeros(size, dtype=np.float32)
    src = sitk.GetImageFromArray(sitk_array_from_ijk(logits.astype(np.float32, copy=False)))
    src.SetSpacing([window.spacing] * 3)
    src.SetOrigin(tuple(float(x) for x in window.voxel_to_lps(src_lo)))
    src.SetDirection(tuple(RAS_DIRECTION_IN_LPS.reshape(-1)))
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing(tuple(float(s) for s in volume.spacing))
    ref.SetOrigin(tuple(float(x) for x in volume.ijk_to_lps(lo)))
    ref.SetDirection(tuple(float(d) for d in volume.direction.reshape(-1)))
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkLinear, float(outside), sitk.sitkFloat32)
    return box, ijk_from_sitk_array(sitk.GetArrayFromImage(out))


def mask_to_window(mask: np.ndarray, volume: Volume, window: Window) -> np.ndarray:
    """A bool mask on the volume's grid -> fraction-covered map (size^3, float32) in the window."""
    image = sitk.GetImageFromArray(sitk_array_from_ijk(mask.astype(np.float32)))
    volume.copy_geometry_to(image)
    return crop_window(image, window, 0.0)


def upsample_logits(low_res: np.ndarray, size: int) -> np.ndarray:
    """(L, L, L) logits -> (size, size, size) float32 by trilinear interpolation with half-pixel centres (PyTorch's
    ``interpolate(..., mode="trilinear", align_corners=False)``, to float rounding), one axis at a time.

    For a whole factor f = size / L, output voxel f * i + r reads source voxels i - 1 + d and i + d for a fixed d and
    weight per phase r, so each phase is one slice of an edge-padded array (no gathers)."""
    out = np.asarray(low_res, dtype=np.float32)
    for axis in range(3):
        n = out.shape[axis]
        factor = size // n
        if factor * n != size:
            raise ValueError(f"upsample_logits needs a whole factor: {n} -> {size}")
        padded = np.concatenate([out.take([0], axis), out, out.take([n - 1], axis)], axis=axis)  # edges clamp
        shape = list(out.shape)
        shape[axis] = size
        result = np.empty(shape, dtype=np.float32)
        for phase in range(factor):
            source = np.float32((phase + 0.5) / factor - 0.5)  # position of output f*i + phase, minus i
            lower = int(np.floor(source))  # -1 or 0
            weight = np.float32(source - lower)
            below = _axis_slice(padded, axis, lower + 1, n)  # padded index lower + 1 + i = source index lower + i
            above = _axis_slice(padded, axis, lower + 2, n)
            index = [slice(None)] * 3
            index[axis] = slice(phase, None, factor)
            result[tuple(index)] = below + (above - below) * weight
        out = result
    return out


def _axis_slice(array: np.ndarray, axis: int, start: int, count: int) -> np.ndarray:
    index = [slice(None)] * array.ndim
    index[axis] = slice(start, start + count)
    return array[tuple(index)]


def block_mean(array: np.ndarray, side: int) -> np.ndarray:
    """(S, S, S) map -> (side, side, side) float32, each voxel the mean of its (S / side)^3 block (PyTorch's
    ``adaptive_avg_pool3d`` when side divides S): a window-space mask or prior as the model's low-res prompt."""
    f = array.shape[0] // side
    blocks = np.asarray(array, dtype=np.float32).reshape(side, f, side, f, side, f)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)
