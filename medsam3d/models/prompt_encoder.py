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

    def embed_tokens(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Prompt tokens -> sparse embeddings (B, N, C), one per token, with no branch on the values (it traces).

        coords (B, N, 3) crop voxel coordinates; labels (B, N): 1 positive click, 0 negative click, 2 and 3 a
        box's first and second corner, -1 "not a point" (SAM's padding token; its coordinates are ignored).
        ``prompt_tokens`` turns points and boxes into these."""
        emb = self.pe_layer.points(coords + 0.5, self.input_image_size)  # + 0.5: the centre of the voxel
        pad = (labels == -1)[..., None]
        emb = torch.where(pad, torch.zeros_like(emb), emb) + pad * self.not_a_point_embed.weight
        for value, embedding in enumerate(self.point_embeddings):  # adding 0 elsewhere keeps each token exact
            emb = emb + (labels == value)[..., None] * embedding.weight
        return emb

    def embed_mask(self, masks: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
        """masks (B, 1, 4X, 4Y, 4Z) logits, has_mask (B,) -> dense embedding (B, C, X, Y, Z): the mask's where
        ``has_mask``, the learned "no mask" embedding elsewhere (both computed, so it traces)."""
        weight = self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1)
        chosen = has_mask.reshape(-1, 1, 1, 1, 1).to(torch.bool)
        return torch.where(chosen, self.mask_downscaling(masks), weight)

    def forward(self, points: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                boxes: Optional[torch.Tensor], masks: Optional[torch.Tensor], batch: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> sparse (B, N, C) and dense (B, C, X, Y, Z) embeddings."""
        coords, token_labels = prompt_tokens(points, labels, boxes, batch)
        sparse = self.embed_tokens(coords.to(self.no_mask_embed.weight.device), token_labels)
        if masks is None:
            weight = self.no_mask_embed.weight
            return sparse, weight.reshape(1, -1, 1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse, self.mask_downscaling(masks)


def prompt_tokens(points: Optional[torch.Tensor], labels: Optional[torch.Tensor], boxes: Optional[torch.Tensor],
                  batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (B, N, 3) + labels (B, N) and boxes (B, 6) -> the decoder's prompt tokens: coords (B, T, 3) and
    labels (B, T) as ``PromptEncoder3D.embed_tokens`` reads them. Clicks first, then the box's two corners, or,
    when there are clicks but no box, SAM's "not a point" padding token."""
    device = points.device if points is not None else boxes.device if boxes is not None else None
    coords = [torch.zeros(batch, 0, 3, device=device)]
    token_labels = [torch.zeros(batch, 0, dtype=torch.long, device=device)]
    if points is not None:
        coords.append(points.float())
        token_labels.append(labels.long())
        if boxes is None:
            coords.append(torch.zeros(batch, 1, 3, device=device))
            token_labels.append(torch.full((batch, 1), -1, dtype=torch.long, device=device))
    if boxes is not None:
        coords.append(boxes.float().reshape(-1, 2, 3))
        token_labels.append(torch.tensor([[2, 3]], device=device).expand(batch, -1))
    return torch.cat(coords, 1), torch.cat(token_labels, 1)
