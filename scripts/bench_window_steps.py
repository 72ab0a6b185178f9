#!/usr/bin/env python
"""The per-window numpy steps of the Segmenter, timed against what they replaced, in the same process.

    python scripts/bench_window_steps.py              # 2 threads; pause background training first

Prints medians of: ranking a grown window's seed clicks (``segmenter._interior_points``, a partial ranking of the
mask's box) against the full sort of the window's 2M distances it replaced; upsampling the default's low-res
logits to the window (``preprocess.upsample_logits``) against PyTorch's ``interpolate``; and a window's crop
(``preprocess.crop_window``) and intensity normalisation, on the example CT's liver as the default answers it; and
pasting that window's mask back (``preprocess.paste_mask``) against SimpleITK's linear resampling thresholded
(``paste_back``), onto the scan's grid and onto the same scan at 0.8 x 0.8 x 1.5 mm (a clinical grid).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from benchutil import median_times  # noqa: E402


def full_sort_seeds(mask: np.ndarray, count: int) -> np.ndarray:
    """The ranking _interior_points used before: distances over the whole window, numpy's argsort of them all."""
    from scipy import ndimage

    from medsam3d.boxes import bounding_box

    box = bounding_box(mask, margin=1)
    depth = np.zeros(mask.shape)
    depth[box] = ndimage.distance_transform_edt(mask[box])
    flat = np.argsort(depth.reshape(-1))[::-1][:count]
    return np.stack(np.unravel_index(flat, mask.shape), 1).astype(np.float64)


def main() -> None:
    import torch
    import torch.nn.functional as F

    from medsam3d.intensity import normalise
    from medsam3d.preprocess import crop_window, upsample_logits
    from medsam3d.segmenter import Segmenter, _interior_points

    torch.set_num_threads(2)
    seg = Segmenter(threads=2)
    seg.set_volume(str(REPO / "data" / "example_ct_sm.nii.gz"))
    result = seg.predict(points=[(91, 52, 18)])  # the README's liver: two windows
    window = result.windows[0]
    low_res = next(iter(result.low_res.values()))  # (64, 64, 64)
    mask = upsample_logits(low_res, seg.size) > 0  # the window's mask, as a grown window's prior sees it
    print(f"liver window mask: {int(mask.sum())} voxels of {mask.size}")

    seeds, full = median_times([lambda: _interior_points(mask, 2), lambda: full_sort_seeds(mask, 2)], 7)
    print(f"seed ranking: partial {seeds * 1e3:.1f} ms, full sort {full * 1e3:.1f} ms ({full / seeds:.1f}x)")
    tensor = torch.from_numpy(low_res)[None, None]
    ours, theirs = median_times([
        lambda: upsample_logits(low_res, seg.size),
        lambda: F.interpolate(tensor, size=(seg.size,) * 3, mode="trilinear", align_corners=False)], 15)
    print(f"upsampling {low_res.shape[0]}^3 -> {seg.size}^3: numpy {ours * 1e3:.1f} ms, "
          f"torch {theirs * 1e3:.1f} ms ({theirs / ours:.2f}x)")
    crop = crop_window(seg._source, window, seg._fill)
    crop_s, norm_s = median_times([lambda: crop_window(seg._source, window, seg._fill),
                                   lambda: normalise(crop, seg.modality)], 15)
    print(f"per window: crop (resample) {crop_s * 1e3:.1f} ms, intensity normalisation {norm_s * 1e3:.1f} ms")

    import SimpleITK as sitk

    from medsam3d.io import Volume
    from medsam3d.preprocess import paste_back, paste_mask, positive_logits

    offset, block = positive_logits(low_res, seg.size)
    fine_spacing = (0.8, 0.8, 1.5)
    source = seg._source
    reference = sitk.Image([int(round(n * s / t)) for n, s, t in zip(source.GetSize(), source.GetSpacing(),
                                                                      fine_spacing)], sitk.sitkUInt8)
    reference.SetSpacing(fine_spacing)
    reference.SetOrigin(source.GetOrigin())
    reference.SetDirection(source.GetDirection())
    for name, volume in (("scan's grid", seg.volume), ("0.8 x 0.8 x 1.5 mm", Volume.from_sitk(reference))):
        box, mask_fast = paste_mask(block, window, volume, offset=offset)
        same = np.array_equal(mask_fast, paste_back(block, window, volume, offset=offset)[1] > 0)
        fast, sitk_s = median_times([lambda: paste_mask(block, window, volume, offset=offset),
                                     lambda: paste_back(block, window, volume, offset=offset)[1] > 0], 9)
        print(f"paste-back of the window's mask onto the {name} ({mask_fast.size / 1e6:.2f} M voxels): paste_mask "
              f"{fast * 1e3:.1f} ms, SimpleITK {sitk_s * 1e3:.1f} ms ({sitk_s / fast:.2f}x), same mask: {same}")


if __name__ == "__main__":
    main()
