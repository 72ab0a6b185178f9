"""Small building blocks shared by the encoders, the prompt encoder and the mask decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm3d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, X, Y, Z) tensor (SAM-Med3D's layout and eps)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, X, Y, Z)
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None, None] * x + self.bias[:, None, None, None]


class MLPBlock(nn.Module):
    """Transformer feed-forward block: Linear -> activation -> Linear (key names lin1/lin2 as in SAM)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """Plain MLP with ReLU between layers (the decoder's hypernetworks and IoU head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == last else F.relu(layer(x))
        return x


class PatchEmbed3D(nn.Module):
    """Non-overlapping 3D patches -> tokens: (B, C_in, X, Y, Z) -> (B, X/p, Y/p, Z/p, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


def make_neck(embed_dim: int, out_chans: int, eps: float = 1e-6) -> nn.Sequential:
    """SAM's neck: 1x1x1 conv -> LayerNorm3d -> 3x3x3 conv -> LayerNorm3d (keys neck.0 .. neck.3)."""
    return nn.Sequential(
        nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
        LayerNorm3d(out_chans, eps),
        nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
        LayerNorm3d(out_chans, eps),
    )
