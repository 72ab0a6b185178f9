"""Between the scan's grid and the model's: crop windows in model space and paste-back (intensities: ``intensity``).

SAM-Med3D-family models were trained on crops made by resampling to 1.5 mm, reorienting to RAS+ and cropping
128^3, then z-normalising over voxels > 0, with tensor axes in canonical (x, y, z) order. A ``Window`` is such a
crop, placed anywhere in the world: axis 0 points to patient Right (-L), axis 1 to Anterior (-P), axis 2 to
Superior, with isotropic spacing. The user's image is resampled into it (never modified), and the model's
logits are resampled back onto the user's own grid, inside the window's footprint only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

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
               offset: tuple = (0, 0, 0)) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Window logits (model space) -> logits on ``volume``'s own grid inside their footprint.

    ``logits``: the whole window (size^3), or a block of it whose voxel 0 is window voxel ``offset`` (then the
    footprint is the block's; a mask needs only ``positive_part``'s block). Returns the index box and the float32
    logits there (linear interpolation; ``outside`` beyond the window).
    """
    src_lo, box = _block_footprint(logits, window, volume, offset)
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


def paste_mask(logits: np.ndarray, window: Window, volume: Volume,
               offset: tuple = (0, 0, 0)) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """The mask of ``paste_back(logits, window, volume, offset=offset)`` (its logits > 0), for less work ->
    (box, bool): what the Segmenter's masks are made of.

    On a scan whose axes run along the patient's (direction cosines a signed permutation: NIfTI's RAS, DICOM's
    LPS, flips), each scan axis maps to one window axis, and the linear interpolation of a scan voxel mixes the 8
    window voxels around it only: it is > 0 where all 8 are, <= 0 where none is. Only the voxels between both are
    interpolated (float64, as SimpleITK does). On a fine grid most voxels of the box are one or the other, which
    saves most of SimpleITK's per-voxel work. Where the two compute a voxel's place differently by float rounding
    they can disagree: a voxel exactly on the window's outer face (half a window voxel beyond its last), or one
    whose interpolated value is within 1e-15 of zero. Oblique scans go through ``paste_back``."""
    direction = volume.direction
    magnitude = np.abs(direction)
    if not (np.isin(magnitude, (0.0, 1.0)).all() and (magnitude.sum(0) == 1).all()):  # not a signed permutation
        box, values = paste_back(logits, window, volume, offset=offset)
        return box, values > 0
    src_lo, box = _block_footprint(logits, window, volume, offset)
    size = [b.stop - b.start for b in box]
    if min(size) <= 0:
        return box, np.zeros(size, dtype=bool)
    block_origin = window.voxel_to_lps(src_lo)  # LPS of the block's voxel 0
    axis_of = np.argmax(np.abs(direction), axis=0)  # scan axis s runs along LPS (= window) axis axis_of[s]
    lower, upper, frac, inside = [], [], [], []
    for s in range(3):
        w = int(axis_of[s])
        n = logits.shape[w]
        index = np.arange(box[s].start, box[s].stop, dtype=np.float64)
        lps = volume.origin[w] + direction[w, s] * volume.spacing[s] * index
        c = RAS_DIRECTION_IN_LPS[w, w] * (lps - block_origin[w]) / window.spacing  # window voxel coordinate
        inside.append((c >= -0.5) & (c < n - 0.5))  # SimpleITK's buffer test; beyond it: outside (<= 0)
        clamped = np.clip(c, 0, n - 1)  # within half a voxel of the edge, the edge voxel's value
        low = np.minimum(np.floor(clamped).astype(int), max(n - 2, 0))
        lower.append(low)
        upper.append(np.minimum(low + 1, n - 1))
        frac.append(clamped - low)
    # each cell (window voxel l and l + 1 along every axis, the last repeated): all > 0, or any > 0
    positive = np.pad(logits > 0, [(0, 1)] * 3, mode="edge")
    n0, n1, n2 = logits.shape
    corners = [positive[d0:d0 + n0, d1:d1 + n1, d2:d2 + n2] for d0 in (0, 1) for d1 in (0, 1) for d2 in (0, 1)]
    all_positive = np.logical_and.reduce(corners)
    any_positive = np.logical_or.reduce(corners)
    cell = all_positive.astype(np.uint8) + any_positive  # 2: > 0, 0: <= 0, 1: interpolate
    order = [int(np.flatnonzero(axis_of == w)[0]) for w in range(3)]  # window axis w runs along scan axis order[w]
    by_scan_axis = cell.transpose([int(axis_of[s]) for s in range(3)])  # (scan axes) cells
    for s in range(3):
        by_scan_axis = by_scan_axis.take(lower[s], axis=s)
    by_scan_axis = by_scan_axis * (inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :])
    mask = by_scan_axis == 2
    mixed = np.nonzero(by_scan_axis == 1)  # scan box indices of the voxels to interpolate
    if len(mixed[0]):
        # per voxel and window axis: the lower corner (as a flat offset), the step to the upper one, the fraction
        strides = [logits.shape[1] * logits.shape[2], logits.shape[2], 1]
        flat = np.zeros(len(mixed[0]), dtype=np.int64)
        steps, fractions = [], []
        for w in range(3):
            s = order[w]
            at = mixed[s]
            flat += lower[s][at] * strides[w]
            steps.append((upper[s] - lower[s])[at] * strides[w])
            fractions.append(frac[s][at])
        values = logits.reshape(-1)

        def corner(a: int, b: int, c: int) -> np.ndarray:
            return values.take(flat + a * steps[0] + b * steps[1] + c * steps[2]).astype(np.float64)

        # trilinear in float64, along window axis 0, then 1, then 2 (SimpleITK's order)
        f0, f1, f2 = fractions
        v000, v100, v010, v110 = corner(0, 0, 0), corner(1, 0, 0), corner(0, 1, 0), corner(1, 1, 0)
        v001, v101, v011, v111 = corner(0, 0, 1), corner(1, 0, 1), corner(0, 1, 1), corner(1, 1, 1)
        v00, v10 = v000 + (v100 - v000) * f0, v010 + (v110 - v010) * f0
        v01, v11 = v001 + (v101 - v001) * f0, v011 + (v111 - v011) * f0
        v0, v1 = v00 + (v10 - v00) * f1, v01 + (v11 - v01) * f1
        mask[mixed] = v0 + (v1 - v0) * f2 > 0
    return box, mask


def _block_footprint(logits: np.ndarray, window: Window, volume: Volume,
                     offset: tuple) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """A block of window logits from window voxel ``offset`` on -> (that first voxel (3,), the index box of
    ``volume`` it covers)."""
    src_lo = np.asarray(offset, dtype=int)
    src_hi = src_lo + np.asarray(logits.shape) - 1
    return src_lo, window.footprint(volume, tuple(int(v) for v in src_lo), tuple(int(v) for v in src_hi))


def mask_to_window(mask: np.ndarray, volume: Volume, window: Window) -> np.ndarray:
    """A bool mask on the volume's grid -> fraction-covered map (size^3, float32) in the window."""
    image = sitk.GetImageFromArray(sitk_array_from_ijk(mask.astype(np.float32)))
    volume.copy_geometry_to(image)
    return crop_window(image, window, 0.0)


def positive_part(logits: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The block of ``logits`` around its voxels > 0, padded by one voxel (clipped) -> (its first voxel (3,), the
    block), or (zeros, None) when no voxel is > 0. Outside it every value is <= 0, and so is anything interpolated
    from them, so pasting the block alone gives the same thresholded mask."""
    inside = logits > 0
    spans = [np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if not len(spans[0]):
        return np.zeros(3, dtype=int), None
    lo = np.maximum([span[0] - 1 for span in spans], 0)
    hi = np.minimum([span[-1] + 2 for span in spans], logits.shape)
    return lo, logits[tuple(slice(a, b) for a, b in zip(lo, hi))]


def positive_logits(low_res: np.ndarray, size: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``positive_part(upsample_logits(low_res, size))`` without upsampling the whole window: an upsampled voxel
    mixes the (L, L, L) voxels next to it only, so its voxels > 0 lie within one low-res voxel of theirs."""
    inside = low_res > 0
    if not inside.any():
        return np.zeros(3, dtype=int), None
    factor = size // low_res.shape[0]
    spans = [np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    # upsampled voxels of low-res voxels span[0] - 1 .. span[-1] + 1 hold every voxel > 0 and the one beyond
    start = np.maximum([factor * (span[0] - 1) for span in spans], 0)
    stop = np.minimum([factor * (span[-1] + 2) for span in spans], size)
    lo, part = positive_part(upsample_logits(low_res, size, start, stop))
    return (start + lo, part) if part is not None else (lo, None)


def upsample_logits(low_res: np.ndarray, size: int, start: Optional[Sequence[int]] = None,
                    stop: Optional[Sequence[int]] = None) -> np.ndarray:
    """(L, L, L) logits -> (size, size, size) float32 by trilinear interpolation with half-pixel centres (PyTorch's
    ``interpolate(..., mode="trilinear", align_corners=False)``, to float rounding), one axis at a time; with
    ``start``/``stop``, only the output voxels [start, stop) (the same values, computed from the low-res voxels
    they read).

    For a whole factor f = size / L, output voxel f * i + r reads source voxels i - 1 + d and i + d for a fixed d and
    weight per phase r, so each phase is one slice of an edge-padded array (no gathers)."""
    out = np.asarray(low_res, dtype=np.float32)
    factor = size // out.shape[0]
    if factor * out.shape[0] != size or out.shape[1:] != out.shape[:1] * 2:
        raise ValueError(f"upsample_logits needs a cube and a whole factor: {out.shape} -> {size}")
    if start is None and stop is None:
        return _upsample(out, factor)
    start = np.zeros(3, int) if start is None else np.asarray(start, int)
    stop = np.full(3, size) if stop is None else np.asarray(stop, int)
    # low-res voxels first..last-1 give outputs f*first .. f*last - 1; the outer ones see edge padding instead of
    # their neighbour, so take one low-res voxel of context beyond the outputs wanted, unless it is the real edge
    first = np.maximum(start // factor - 1, 0)
    last = np.minimum((stop - 1) // factor + 2, out.shape[0])
    block = _upsample(out[tuple(slice(a, b) for a, b in zip(first, last))], factor)
    return np.ascontiguousarray(block[tuple(slice(a - factor * f, b - factor * f)
                                            for a, b, f in zip(start, stop, first))])


def _upsample(out: np.ndarray, factor: int) -> np.ndarray:
    """Each axis of ``out`` ``factor`` times longer (``upsample_logits``), edges clamped."""
    for axis in range(3):
        n = out.shape[axis]
        padded = np.concatenate([out.take([0], axis), out, out.take([n - 1], axis)], axis=axis)  # edges clamp
        shape = list(out.shape)
        shape[axis] = n * factor
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
