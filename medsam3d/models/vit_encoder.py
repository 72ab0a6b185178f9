"""SAM-Med3D's 3D ViT image encoder (the teacher), checkpoint-compatible with SAM-Med3D(-turbo).

128^3 image -> 16^3 patches -> 8^3 tokens (+ absolute position) -> ``depth`` blocks, windowed (14^3) except the
``global_attn_indexes`` ones -> conv neck -> (B, out_chans, 8, 8, 8).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from torch import nn

from .checkpoint import block_indices
from .common import MLPBlock, PatchEmbed3D, make_neck
from .config import SamMed3DConfig
from .relpos_attention import RelPosAttention3D


class ViTBlock3D(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, use_rel_pos: bool,
                 window_size: int, grid: int, eps: float) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = RelPosAttention3D(dim, num_heads, qkv_bias, use_rel_pos, window_size or grid)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, padded_reference: bool = False) -> torch.Tensor:  # (B, X, Y, Z, C)
        x = x + self.attn(self.norm1(x), self.window_size, padded_reference)
        return x + self.mlp(self.norm2(x))


class ViTEncoder3D(nn.Module):
    """The SAM-Med3D image encoder. ``padded_reference`` switches windowed blocks to the padded baseline."""

    def __init__(self, cfg: SamMed3DConfig) -> None:
        super().__init__()
        self.img_size = cfg.img_size
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed3D(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock3D(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.use_rel_pos,
                       0 if i in cfg.global_attn_indexes else cfg.window_size, grid, cfg.layernorm_eps)
            for i in range(cfg.depth)
        )
        self.neck = make_neck(cfg.embed_dim, cfg.out_chans)
        self.padded_reference = False

    def forward_blocks(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """-> (stream after each block, (B, X, Y, Z, C) each; neck output): what distillation matches."""
        x = self.patch_embed(x) + self.pos_embed
        streams = []
        for block in self.blocks:
            x = block(x, self.padded_reference)
            streams.append(x)
        return streams, self.neck(x.permute(0, 4, 1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, S, S, S) -> (B, out_chans, S/16, ..)
        return self.forward_blocks(x)[1]


def recognise(encoder_state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """For load errors (``base.Recogniser``): every block has SAM's attention (``blocks.i.attn.qkv``)."""
    blocks = block_indices(encoder_state)
    if blocks and all(f"blocks.{i}.attn.qkv.weight" in encoder_state for i in blocks):
        return "a SAM-Med3D ViT encoder"
    return None
