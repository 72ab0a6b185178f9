"""FastSAM3D's released student encoder, checkpoint-compatible with its published weights.

``skip_layer`` attention-free blocks, then attention blocks (global, with SAM-Med3D's relative positions), then
SAM-Med3D's neck. ``forward_features`` returns what the reference returns for layer-wise distillation: the
patch embedding + position, the stream after every ``layeroutput``-th block, and the neck output last.

Reference quirk reproduced here (FastSAM3D ``Block3D_woatt`` and ``Block3D``): normalisation is applied to the
residual stream itself, and the MLP's residual is taken from the normalised stream:
``x = norm2(x); x = x + mlp(x)``, rather than SAM's pre-norm ``x = x + mlp(norm2(x))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from torch import nn

from .checkpoint import block_indices
from .common import MLPBlock, PatchEmbed3D, make_neck
from .config import FastSam3DConfig
from .vit_encoder import ViTBlock3D


class AttentionFreeBlock3D(nn.Module):
    """FastSAM3D's early block: MLP only (keys norm2, mlp)."""

    def __init__(self, dim: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm2(x)  # quirk: the stream itself is normalised (module docstring)
        return x + self.mlp(x)


class StudentBlock3D(ViTBlock3D):
    """FastSAM3D's attention block: SAM's layers and keys, pre-norm attention, then the post-norm MLP quirk."""

    def forward(self, x: torch.Tensor, padded_reference: bool = False) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), self.window_size, padded_reference)
        x = self.norm2(x)  # quirk: normalise the stream, residual from the normalised stream
        return x + self.mlp(x)


class FastSam3DEncoder(nn.Module):
    def __init__(self, cfg: FastSam3DConfig) -> None:
        super().__init__()
        if not 0 <= cfg.skip_layer <= cfg.depth:
            raise ValueError(f"skip_layer must be between 0 and depth={cfg.depth}, got {cfg.skip_layer}")
        self.img_size = cfg.img_size
        self.layeroutput = cfg.layeroutput
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed3D(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, cfg.embed_dim))
        blocks: list[nn.Module] = [
            AttentionFreeBlock3D(cfg.embed_dim, cfg.mlp_ratio, cfg.layernorm_eps) for _ in range(cfg.skip_layer)
        ]
        # the reference numbers attention blocks from 0 when matching global_attn_indexes
        blocks += [
            StudentBlock3D(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.use_rel_pos,
                           0 if i in cfg.global_attn_indexes else cfg.window_size, grid, cfg.layernorm_eps)
            for i in range(cfg.depth - cfg.skip_layer)
        ]
        self.blocks = nn.ModuleList(blocks)
        self.neck = make_neck(cfg.embed_dim, cfg.out_chans)
        self.padded_reference = False

    def forward_blocks(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """-> (stream after each block, neck output)."""
        return self._run_blocks(self.patch_embed(x) + self.pos_embed)

    def _run_blocks(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        streams = []
        for block in self.blocks:
            x = block(x, self.padded_reference) if isinstance(block, StudentBlock3D) else block(x)
            streams.append(x)
        return streams, self.neck(x.permute(0, 4, 1, 2, 3))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The reference's output list: [patch+pos, stream after every `layeroutput`-th block ..., neck]."""
        embedded = self.patch_embed(x) + self.pos_embed
        streams, neck = self._run_blocks(embedded)
        return [embedded] + streams[self.layeroutput - 1 :: self.layeroutput] + [neck]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, S, S, S) -> (B, out_chans, S/16, ..)
        return self.forward_blocks(x)[1]


def recognise(encoder_state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """For load errors (``base.Recogniser``): some blocks are MLP-only (``AttentionFreeBlock3D``: no norm1), the
    others have SAM's attention."""
    blocks = block_indices(encoder_state)
    mlp_only = [i for i in blocks if f"blocks.{i}.norm1.weight" not in encoder_state]
    attention = [i for i in blocks if f"blocks.{i}.attn.qkv.weight" in encoder_state]
    if mlp_only and len(mlp_only) + len(attention) == len(blocks):
        return f"a FastSAM3D student encoder ({len(mlp_only)} attention-free blocks)"
    return None
