"""Bounding boxes of masks as index slices: numpy only, so the Segmenter, sessions and metrics can share it."""

from __future__ import annotations

import numpy as np


def bounding_box(mask: np.ndarray, margin=0) -> tuple[slice, slice, slice]:
    """Slices of ``mask``'s bounding box grown by ``margin`` voxels (one number or one per axis), clipped to the
    array; the whole array when ``mask`` is empty. Projections, not ``argwhere``: one pass, no index list."""
    margin = np.broadcast_to(np.asarray(margin, dtype=int), (mask.ndim,))
    out = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if not len(hit):
            return tuple(slice(0, n) for n in mask.shape)
        out.append(slice(max(int(hit[0]) - int(margin[axis]), 0), min(int(hit[-1]) + 1 + int(margin[axis]),
                                                                        mask.shape[axis])))
    return tuple(out)
