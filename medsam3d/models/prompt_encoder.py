"""3D prompt encoder: points, boxes and a low-res mask -> sparse and dense prompt embeddings.

Prompts are in the 128^3 crop's voxel frame, axes in the order of the image tensor's spatial axes.

Reference quirks reproduced when ``reference_pe`` is on (SAM-Med3D ``prompt_encoder3D.py``; its checkpoints were
trained with them):

* the random-Fourier encoding is ``cat(sin, cos, sin)`` over ``embed_dim // 3`` frequencies (sin appears twice);
* the dense positional encoding of the image grid swaps the first two axes: grid position (i, j, k) is encoded
  as the point (j + 0.5, i + 0.5, k + 0.5) / size, while point prompts are encoded as given.

medsam3d's own models use ``cat(sin, cos)`` over ``embed_dim // 2`` frequencies and consistent axes.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .common import LayerNorm3d


class RandomFourierPE3D(nn.Module):
    """Positional encoding with random spatial frequencies (SAM's ``PositionEmbeddingRandom``, in 3D)."""

    def __init__(self, embed_dim: int, reference_pe: bool) -> None:
        super().__init__()
        self.reference_pe = reference_pe
        n_freqs = embed_dim // 3 if reference_pe else embed_dim // 2
        if (3 if reference_pe else 2) * n_freqs != embed_dim:
            raise ValueError(f"prompt_embed_dim {embed_dim} must be divisible by {3 if reference_pe else 2}")
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, n_freqs))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:  # (..., 3) in [0, 1] -> (..., C)
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        if self.reference_pe:
            return torch.cat([torch.sin(coords), torch.cos(coords), torch.sin(coords)], dim=-1)
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def dense(self, size: tuple[int, int, int]) -> torch.Tensor:  # -> (C, X, Y, Z)
        device = self.positional_encoding_gaussian_matrix.device
        axes = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in size]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (X, Y, Z, 3)
        if self.reference_pe:
            # quirk: the reference stacks (axis-1 coordinate, axis-0 coordinate, axis-2 coordinate), each
            # normalised by the size of the other axis of the pair (identical for cubic grids)
            grid = torch.stack([grid[..., 1] * size[1] / size[0], grid[..., 0] * size[0] / size[1], grid[..., 2]], -1)
        return self._encode(grid).permute(3, 0, 1, 2)

    def points(self, coords: torch.Tensor, image_size: tuple[int, int, int]) -> torch.Tensor:  # (B,N,3)->(B,N,C)
        scale = coords.new_tensor(image_size, dtype=torch.float32)
        return self._encode(coords.float() / scale)


class PromptEncoder3D(nn.Module):
    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int, int],
                 input_image_size: tuple[int, int, int], mask_in_chans: int, box_prompts: bool,
                 reference_pe: bool) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.box_prompts = box_prompts
        self.pe_layer = RandomFourierPE3D(embed_dim, reference_pe)
        # 0: negative point, 1: positive point, (2, 3: box corners)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4 if box_prompts else 2))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:  # (1, C, X, Y, Z)
        return self.pe_layer.dense(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # centre of the voxel
        if pad:  # a "not a point" token when no box follows (as SAM)
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 3)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        emb = self.pe_layer.points(points, self.input_image_size)
        emb = torch.where((labels == -1)[..., None], torch.zeros_like(emb), emb)
        emb = emb + (labels == -1)[..., None] * self.not_a_point_embed.weight
        emb = emb + (labels == 0)[..., None] * self.point_embeddings[0].weight
        emb = emb + (labels == 1)[..., None] * self.point_embeddings[1].weight
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:  # (B, 6) -> (B, 2, C)
        corners = (boxes + 0.5).reshape(-1, 2, 3)
        emb = self.pe_layer.points(corners, self.input_image_size)
        return emb + torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])[None]

    def forward(self, points: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                boxes: Optional[torch.Tensor], masks: Optional[torch.Tensor], batch: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> sparse (B, N, C) and dense (B, C, X, Y, Z) embeddings."""
        weight = self.no_mask_embed.weight
        sparse = weight.new_empty(batch, 0, self.embed_dim)
        if points is not None:
            sparse = torch.cat([sparse, self._embed_points(points, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = weight.reshape(1, -1, 1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse, dense
