"""medsam3d-tiny's image encoder: FastSAM3D's idea (attention-free early blocks, sparse attention later), sized
for a 2-core CPU.

* A convolutional stem, the encoder half of a small 3D U-Net (``stem_chans``): S/2 by a 2^3 patchify, S/4 by a
  strided conv, S/8 by a strided conv and a residual conv, then a 2^3 patchify to tokens on the (S/16)^3 grid.
  Trained from scratch on a few scans, convolutions learn local intensity and edges far sooner than a 16^3 patch
  projection, and the S/8 and S/4 maps go to the mask decoder as skip connections (sharper boundaries on its
  S/4 output). With ``stem_chans=()`` it is a plain 16^3 patch embedding. Learned absolute position is added to
  the tokens (resized for other grids).
* ``conv_blocks`` attention-free blocks: a depthwise 3x3x3 convolution mixes each token with its neighbours,
  then an MLP (FastSAM3D's early blocks have no token mixing at all; a depthwise conv costs almost nothing).
* Attention blocks alternate two kinds of 3D sparse attention (``attention.grouped_attention``):
  "dilated" groups are interleaved sub-grids spanning the whole volume (far context) and "window" groups are
  contiguous blocks (near context). Each group holds ``group``^3 tokens, so cost grows linearly with the number
  of tokens instead of quadratically, and every output is scattered back to its own token.
* SAM's conv neck to ``out_chans`` channels, the width the prompt encoder and decoder work in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .attention import grouped_attention
from .checkpoint import block_indices
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


def _conv_norm_act(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=(kernel - stride + 1) // 2, bias=False),
        nn.InstanceNorm3d(c_out, affine=True),
        nn.GELU(),
    )


class ResidualConv3D(nn.Module):
    """x + act(norm(conv3(x))): one more 3x3x3 look at a stage without changing its size."""

    def __init__(self, chans: int) -> None:
        super().__init__()
        self.body = _conv_norm_act(chans, chans, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConvStem3D(nn.Module):
    """(B, 1, S, S, S) -> skip maps at S/8, S/4 and S/2, and tokens (B, S/16, S/16, S/16, embed_dim)."""

    def __init__(self, in_chans: int, chans: tuple[int, ...], embed_dim: int) -> None:
        super().__init__()
        c2, c4, c8 = chans
        self.down2 = _conv_norm_act(in_chans, c2, 2, 2)  # patchify: the cheapest look at full resolution
        self.down4 = _conv_norm_act(c2, c4, 3, 2)
        self.down8 = nn.Sequential(_conv_norm_act(c4, c8, 3, 2), ResidualConv3D(c8))
        self.to_tokens = nn.Conv3d(c8, embed_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s2 = self.down2(x)  # (B, c2, S/2, ..)
        s4 = self.down4(s2)  # (B, c4, S/4, ..)
        s8 = self.down8(s4)  # (B, c8, S/8, ..)
        return s8, s4, s2, self.to_tokens(s8).permute(0, 2, 3, 4, 1)


class TinyEncoder3D(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.img_size = cfg.img_size
        self.fine_output = bool(cfg.fine_output)
        if self.fine_output and not cfg.stem_chans:
            raise ValueError("fine_output needs the conv stem (stem_chans): its S/2 map feeds the S/2 logits")
        if self.fine_output:
            # the S/2 map, narrowed to the fine head's width (mask_decoder.FineMaskHead) here rather than in the
            # decoder: it does not depend on the prompts, so it is computed once per window and cached with the
            # embedding (scripts/bench_encoders.py times it against a whole click)
            self.fine_skip = nn.Conv3d(cfg.stem_chans[0], cfg.out_chans // 16, kernel_size=1)
        grid = cfg.img_size // cfg.patch_size
        if cfg.stem_chans:
            if len(cfg.stem_chans) != 3 or cfg.patch_size != 16:
                raise ValueError(f"stem_chans must give 3 stages (S/2, S/4, S/8) with patch_size 16, got "
                                 f"stem_chans={tuple(cfg.stem_chans)}, patch_size={cfg.patch_size}")
            self.stem = ConvStem3D(cfg.in_chans, tuple(cfg.stem_chans), cfg.embed_dim)
        else:
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

    def _run(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, tuple[torch.Tensor, ...]]:
        """-> streams after each block, neck output (B, out_chans, S/16, ..), skips (S/8 map, S/4 map[, S/2 map
        with fine_output]) or ()."""
        if hasattr(self, "stem"):
            s8, s4, s2, x = self.stem(x)
            skips: tuple[torch.Tensor, ...] = (s8, s4, self.fine_skip(s2)) if self.fine_output else (s8, s4)
        else:
            x, skips = self.patch_embed(x), ()
        x = x + self._position(tuple(x.shape[1:4]))
        streams = []
        for block in self.blocks:
            x = block(x)
            streams.append(x)
        return streams, self.neck(x.permute(0, 4, 1, 2, 3)), skips

    def forward_blocks(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """-> (stream after each block, (B, X, Y, Z, C) each; neck output): what distillation matches."""
        streams, final, _ = self._run(x)
        return streams, final

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 1, S, S, S) -> (embedding (B, out_chans, S/16, ..), *skips): the skips are what the decoder's
        upscaling path adds at S/8 and S/4, and at S/2 with fine_output (none without a stem)."""
        _, final, skips = self._run(x)
        return (final, *skips)


def recognise(encoder_state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """For load errors (``base.Recogniser``): a depthwise-conv block (``ConvMixBlock3D``)."""
    if any(f"blocks.{i}.dwconv.weight" in encoder_state for i in block_indices(encoder_state)):
        return "a medsam3d-tiny encoder"
    return None
