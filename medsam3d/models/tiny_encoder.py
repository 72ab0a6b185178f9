"""medsam3d-tiny's image encoder: FastSAM3D's idea (attention-free early blocks, sparse attention later), sized
for a 2-core CPU.

* Patch embedding 16^3 -> tokens on an (S/16)^3 grid, learned absolute position (resized for other grids).
* ``conv_blocks`` attention-free blocks: a depthwise 3x3x3 convolution mixes each token with its neighbours,
  then an MLP (FastSAM3D's early blocks have no token mixing at all; a depthwise conv costs almost nothing).
* Attention blocks alternate two kinds of 3D sparse attention (``attention.grouped_attention``):
  "dilated" groups are interleaved sub-grids spanning the whole volume (far context) and "window" groups are
  contiguous blocks (near context). Each group holds ``group``^3 tokens, so cost grows linearly with the number
  of tokens instead of quadratically, and every output is scattered back to its own token.
* SAM's conv neck to ``out_chans`` channels, the width the prompt encoder and decoder work in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import grouped_attention
from .common import MLPBlock, PatchEmbed3D, make_neck
from .config import TinyConfig


class ConvMixBlock3D(nn.Module):
    """Attention-free block: x + dwconv(norm1(x)), then x + mlp(norm2(x)). Tokens (B, X, Y, Z, C)."""

    def __init__(self, dim: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.dwconv = nn.Conv3d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dwconv(self.norm1(x).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        return x + self.mlp(self.norm2(x))


class SparseAttentionBlock3D(nn.Module):
    """Pre-norm transformer block whose attention runs inside dilated sub-grids or local windows."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, mode: str, group: int, eps: float) -> None:
        super().__init__()
        if mode not in ("dilated", "window"):
            raise ValueError(f"attention block kind must be 'dilated' or 'window', got {mode!r}")
        self.mode = mode
        self.group = (group, group, group)
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, X, Y, Z, C)
        b, nx, ny, nz, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, nx, ny, nz, 3, self.num_heads, -1).unbind(4)
        out = grouped_attention(q, k, v, self.group, self.mode)  # (B, X, Y, Z, heads, hd)
        x = x + self.proj(out.reshape(b, nx, ny, nz, c))
        return x + self.mlp(self.norm2(x))


class TinyEncoder3D(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.img_size = cfg.img_size
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed3D(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, cfg.embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        blocks: list[nn.Module] = [
            ConvMixBlock3D(cfg.embed_dim, cfg.mlp_ratio, cfg.layernorm_eps) for _ in range(cfg.conv_blocks)
        ]
        blocks += [
            SparseAttentionBlock3D(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, mode, cfg.group, cfg.layernorm_eps)
            for mode in cfg.attn_blocks
        ]
        self.blocks = nn.ModuleList(blocks)
        self.neck = make_neck(cfg.embed_dim, cfg.out_chans)

    def _position(self, grid: tuple[int, int, int]) -> torch.Tensor:  # (1, X, Y, Z, C)
        if tuple(self.pos_embed.shape[1:4]) == grid:
            return self.pos_embed
        resized = F.interpolate(self.pos_embed.permute(0, 4, 1, 2, 3), size=grid, mode="trilinear",
                                align_corners=False)
        return resized.permute(0, 2, 3, 4, 1)

    def forward_blocks(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """-> (stream after each block, (B, X, Y, Z, C) each; neck output): what distillation matches."""
        x = self.patch_embed(x)
        x = x + self._position(tuple(x.shape[1:4]))
        streams = []
        for block in self.blocks:
            x = block(x)
            streams.append(x)
        return streams, self.neck(x.permute(0, 4, 1, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, S, S, S) -> (B, out_chans, S/16, ..)
        return self.forward_blocks(x)[1]
