"""Dense guidance for the decoder's last convolution: where the clicks are, and what the previous mask was.

Sparse point tokens tell the decoder *which* object through attention on the coarse (S/16)^3 grid; these maps give
its full-resolution end the same information voxel by voxel, the way click-as-channel models (DeepIGeoS,
nnInteractive) do, at the cost of one small convolution per click.
"""

from __future__ import annotations

from typing import Optional

import torch

SIGMA_VOXELS = 1.5  # Gaussian width of a click on the low-res grid (one low-res voxel = 4 crop voxels)
GUIDANCE_CHANNELS = 5  # what decoder_guidance returns: guidance_maps (3) + similarity_maps (2)


def decoder_guidance(
    features: torch.Tensor,  # (B | 1, C, L, L, L) the stem's S/4 skip
    points: Optional[torch.Tensor],  # (B, N, 3) crop voxel coordinates (prompt tokens: only clicks count)
    labels: Optional[torch.Tensor],  # (B, N): 1 positive and 0 negative clicks; other values (box corners,
    # padding: prompt_encoder.prompt_tokens) are ignored
    mask_input: Optional[torch.Tensor],  # (B, 1, L, L, L) previous logits
    batch: int,
    crop_size: int,
    has_mask: Optional[torch.Tensor] = None,  # (B,): which samples' mask_input is a real previous mask
) -> torch.Tensor:
    """-> (B, GUIDANCE_CHANNELS, L, L, L): everything the decoder's last conv sees besides its own features."""
    low_res = features.shape[-1]
    return torch.cat([
        guidance_maps(points, labels, mask_input, batch, crop_size, low_res, features.device, features.dtype,
                      has_mask),
        similarity_maps(features, points, labels, batch, crop_size),
    ], dim=1)


def _to_low_res(points: torch.Tensor, crop_size: int, low_res: int) -> torch.Tensor:
    """Crop voxel coordinates (B, N, 3) -> continuous low-res voxel coordinates (voxel centres at integers)."""
    return (points + 0.5) * (low_res / crop_size) - 0.5


def _max_per_sign(maps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """maps (B, N, L, L, L), one per click -> (B, 2, L, L, L): the max over positive clicks and over negative
    clicks, 0 where a sample has no click of that sign."""
    out = []
    for value in (1, 0):
        chosen = (labels.to(maps.device) == value)[..., None, None, None]  # (B, N, 1, 1, 1)
        best = torch.where(chosen, maps, torch.full_like(maps, -torch.inf)).amax(1)
        # a sum, not any(): exported, any() over no tokens (T = 0) is a ReduceMax that says True
        out.append(torch.where(chosen.sum(1) > 0, best, torch.zeros_like(best)))
    return torch.stack(out, dim=1)


def guidance_maps(
    points: Optional[torch.Tensor],  # (B, N, 3) crop voxel coordinates
    labels: Optional[torch.Tensor],  # (B, N): 1 positive, 0 negative (other values ignored)
    mask_input: Optional[torch.Tensor],  # (B, 1, L, L, L) previous logits
    batch: int,
    crop_size: int,
    low_res: int,
    device: torch.device,
    dtype: torch.dtype,
    has_mask: Optional[torch.Tensor] = None,  # (B,): False where mask_input is only a placeholder
) -> torch.Tensor:
    """-> (B, 3, L, L, L): positive-click heatmap, negative-click heatmap (each the max of one Gaussian per click,
    1 at a click), and the previous mask as a probability (0 where there is none)."""
    clicks = torch.zeros(batch, 2, low_res, low_res, low_res, device=device, dtype=dtype)
    if points is not None and points.shape[1] > 0:
        centres = _to_low_res(points.to(device=device, dtype=dtype), crop_size, low_res)  # (B, N, 3)
        axis = torch.arange(low_res, device=device, dtype=dtype)
        # separable Gaussian: exp(-|v - c|^2 / 2s^2) = product over the three axes
        g = [torch.exp(-(axis[None, None] - centres[..., a, None]) ** 2 / (2 * SIGMA_VOXELS**2)) for a in range(3)]
        blobs = g[0][..., :, None, None] * g[1][..., None, :, None] * g[2][..., None, None, :]  # (B, N, L, L, L)
        clicks = _max_per_sign(blobs, labels).to(dtype)
    previous = torch.zeros(batch, 1, low_res, low_res, low_res, device=device, dtype=dtype)
    if mask_input is not None:
        previous = torch.sigmoid(mask_input[:, :1].to(dtype)).expand(batch, -1, -1, -1, -1)
        if has_mask is not None:
            chosen = has_mask.reshape(-1, 1, 1, 1, 1).to(device=device, dtype=torch.bool)
            previous = torch.where(chosen, previous, torch.zeros_like(previous))
    return torch.cat([clicks, previous], dim=1)


def similarity_maps(
    features: torch.Tensor,  # (B | 1, C, L, L, L) image features on the low-res grid (the stem's S/4 skip)
    points: Optional[torch.Tensor],  # (B, N, 3) crop voxel coordinates
    labels: Optional[torch.Tensor],  # (B, N)
    batch: int,
    crop_size: int,
) -> torch.Tensor:
    """-> (B, 2, L, L, L): for every voxel, the highest cosine similarity of its features to the features under a
    positive click, and the same for negative clicks (0 where there is no click of that sign).

    This is the cue region growing and the random walker live on (voxels that look like the clicked one), handed
    to the decoder explicitly: training then shapes the stem's features so that "looks alike" means "same
    structure", instead of the decoder having to discover that from the sparse tokens alone."""
    low_res = features.shape[-1]
    if points is None or points.shape[1] == 0:
        return features.new_zeros(batch, 2, low_res, low_res, low_res)
    unit = torch.nn.functional.normalize(features.float(), dim=1).expand(batch, -1, -1, -1, -1)  # (B, C, L, L, L)
    index = _to_low_res(points.to(features.device).float(), crop_size, low_res)
    index = (index + 0.5).floor().long().clamp(0, low_res - 1)  # (B, N, 3) the low-res voxel holding each click
    b = torch.arange(batch, device=features.device)[:, None].expand_as(index[..., 0])
    at_clicks = unit[b, :, index[..., 0], index[..., 1], index[..., 2]]  # (B, N, C)
    sims = torch.einsum("bnc,bcxyz->bnxyz", at_clicks, unit)  # (B, N, L, L, L)
    return _max_per_sign(sims, labels).to(features.dtype)
