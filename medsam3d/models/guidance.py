"""Dense guidance for the decoder's last convolution: where the clicks are, and what the previous mask was.

Sparse point tokens tell the decoder *which* object through attention on the coarse (S/16)^3 grid; these maps give
its full-resolution end the same information voxel by voxel, the way click-as-channel models (DeepIGeoS,
nnInteractive) do, at the cost of one small convolution per click.
"""

from __future__ import annotations

from typing import Optional

import torch

SIGMA_VOXELS = 1.5  # Gaussian width of a click on the low-res grid (one low-res voxel = 4 crop voxels)


def guidance_maps(
    points: Optional[torch.Tensor],  # (B, N, 3) crop voxel coordinates
    labels: Optional[torch.Tensor],  # (B, N): 1 positive, 0 negative
    mask_input: Optional[torch.Tensor],  # (B, 1, L, L, L) previous logits
    batch: int,
    crop_size: int,
    low_res: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """-> (B, 3, L, L, L): positive-click heatmap, negative-click heatmap (each the max of one Gaussian per click,
    1 at a click), and the previous mask as a probability (0 where there is none)."""
    out = torch.zeros(batch, 3, low_res, low_res, low_res, device=device, dtype=dtype)
    if points is not None and points.shape[1] > 0:
        scale = low_res / crop_size
        centres = (points.to(device=device, dtype=dtype) + 0.5) * scale - 0.5  # (B, N, 3) in low-res voxels
        axis = torch.arange(low_res, device=device, dtype=dtype)
        # separable Gaussian: exp(-|v - c|^2 / 2s^2) = product over the three axes
        g = [torch.exp(-(axis[None, None] - centres[..., a, None]) ** 2 / (2 * SIGMA_VOXELS**2)) for a in range(3)]
        blobs = g[0][..., :, None, None] * g[1][..., None, :, None] * g[2][..., None, None, :]  # (B, N, L, L, L)
        for channel, value in ((0, 1), (1, 0)):
            chosen = (labels.to(device) == value).to(dtype)[..., None, None, None]  # (B, N, 1, 1, 1)
            out[:, channel] = (blobs * chosen).amax(1)
    if mask_input is not None:
        out[:, 2] = torch.sigmoid(mask_input[:, 0].to(dtype))
    return out
