"""Attention kernels: the one place where the backend (flash-attn or PyTorch SDPA) is chosen.

``attend`` runs multi-head attention on (B, heads, N, head_dim) tensors. On CUDA, with the optional ``gpu``
extra installed (flash-attn), half-precision and unmasked, it calls flash-attn's kernel; everywhere else it
calls ``torch.nn.functional.scaled_dot_product_attention``, which has fused CPU kernels of its own (fed 4D
tensors, which is what keeps it on the fast path).

``grouped_attention`` is the 3D sparse attention of medsam3d-tiny: tokens on a (X, Y, Z) grid are split into
groups, attention runs inside each group, and every output is scattered back to its own token's position.

* ``"dilated"`` groups are interleaved sub-grids: along each axis with dilation r, tokens p and p' are in the
  same group when p % r == p' % r. A group spans the whole volume sparsely (far context).
* ``"window"`` groups are contiguous blocks of g tokens per axis (near context).

Grids that do not divide evenly are padded at the far end; padded tokens are masked out as keys and dropped
from the output, so the result is exactly dense attention restricted to the group mask (see ``group_ids``).
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F

try:  # optional: pip install medsam3d[gpu]
    from flash_attn import flash_attn_func as _flash_attn_func  # type: ignore
except Exception:  # pragma: no cover - flash-attn is not installable on CPU machines
    _flash_attn_func = None

GroupMode = Literal["dilated", "window"]


def flash_available(device: torch.device | str, dtype: torch.dtype) -> bool:
    """True when ``attend`` would use flash-attn for tensors on this device and dtype."""
    return (
        _flash_attn_func is not None
        and torch.device(device).type == "cuda"
        and dtype in (torch.float16, torch.bfloat16)
    )


def attend(
    q: torch.Tensor,  # (B, heads, Nq, hd)
    k: torch.Tensor,  # (B, heads, Nk, hd)
    v: torch.Tensor,  # (B, heads, Nk, hd)
    mask: Optional[torch.Tensor] = None,  # float bias or bool keep-mask, broadcastable to (B, heads, Nq, Nk)
) -> torch.Tensor:  # (B, heads, Nq, hd)
    """Softmax(q k^T / sqrt(hd) + mask) v with the best kernel for the device."""
    if mask is None and flash_available(q.device, q.dtype):
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _groups_per_axis(grid: tuple[int, int, int], group: tuple[int, int, int], mode: GroupMode):
    """(count, size) per axis: how many groups and how many tokens per group along each axis."""
    if mode == "window":  # windows of `group` tokens
        counts = tuple(math.ceil(n / g) for n, g in zip(grid, group))
        sizes = tuple(group)
    else:  # dilation r = ceil(n / g): r interleaved sub-grids of g tokens per axis
        counts = tuple(math.ceil(n / g) for n, g in zip(grid, group))
        sizes = tuple(math.ceil(n / r) for n, r in zip(grid, counts))
    return counts, sizes


def partition(
    x: torch.Tensor, group: tuple[int, int, int], mode: GroupMode
) -> tuple[torch.Tensor, tuple]:
    """(B, X, Y, Z, C) -> (B * n_groups, tokens_per_group, C), padding the far end of each axis."""
    b, *grid, c = x.shape
    counts, sizes = _groups_per_axis(tuple(grid), group, mode)
    padded = [n * s for n, s in zip(counts, sizes)]
    pad = [p - n for p, n in zip(padded, grid)]
    if any(pad):
        x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
    if mode == "window":  # axis index p = window * size + offset
        x = x.view(b, counts[0], sizes[0], counts[1], sizes[1], counts[2], sizes[2], c)
    else:  # axis index p = offset * r + subgrid   (r = count)
        x = x.view(b, sizes[0], counts[0], sizes[1], counts[1], sizes[2], counts[2], c)
        x = x.permute(0, 2, 1, 4, 3, 6, 5, 7)  # -> (b, r0, s0, r1, s1, r2, s2, c), same shape as window's
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, sizes[0] * sizes[1] * sizes[2], c)
    return x, (b, tuple(grid), counts, sizes, mode)


def unpartition(x: torch.Tensor, layout: tuple) -> torch.Tensor:
    """Inverse of ``partition``: scatter group outputs back to their own grid positions and crop padding."""
    b, grid, counts, sizes, mode = layout
    c = x.shape[-1]
    x = x.view(b, counts[0], counts[1], counts[2], sizes[0], sizes[1], sizes[2], c)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7)  # (b, n0, s0, n1, s1, n2, s2, c)
    if mode == "dilated":
        x = x.permute(0, 2, 1, 4, 3, 6, 5, 7)  # -> (b, s0, r0, s1, r1, s2, r2, c)
    x = x.reshape(b, counts[0] * sizes[0], counts[1] * sizes[1], counts[2] * sizes[2], c)
    return x[:, : grid[0], : grid[1], : grid[2]]


def group_ids(grid: tuple[int, int, int], group: tuple[int, int, int], mode: GroupMode) -> torch.Tensor:
    """(X*Y*Z,) group index of every token: the block structure ``grouped_attention`` computes."""
    ids = torch.arange(math.prod(grid), dtype=torch.float64).view(1, *grid, 1)
    parts, _ = partition(ids + 1, group, mode)  # +1 so padding (0) is distinguishable
    out = torch.empty(math.prod(grid), dtype=torch.long)
    for g, members in enumerate(parts[..., 0]):
        real = members[members > 0].long() - 1
        out[real] = g
    return out


def grouped_attention(
    q: torch.Tensor,  # (B, X, Y, Z, heads, hd)
    k: torch.Tensor,
    v: torch.Tensor,
    group: tuple[int, int, int],
    mode: GroupMode,
) -> torch.Tensor:  # (B, X, Y, Z, heads, hd)
    """Attention restricted to token groups (dilated sub-grids or local windows), scattered back in place."""
    b, x, y, z, heads, hd = q.shape
    qkv = torch.cat([q, k, v], dim=-1).reshape(b, x, y, z, heads * 3 * hd)
    parts, layout = partition(qkv, group, mode)  # (B*G, n, heads*3*hd)
    bg, n, _ = parts.shape
    parts = parts.view(bg, n, heads, 3 * hd).transpose(1, 2)  # (B*G, heads, n, 3*hd)
    qg, kg, vg = parts.split(hd, dim=-1)
    mask = None
    counts, sizes = layout[2], layout[3]
    if any(c * s != g for c, s, g in zip(counts, sizes, (x, y, z))):
        valid, _ = partition(q.new_ones(b, x, y, z, 1), group, mode)  # (B*G, n, 1); 0 where padded
        mask = (valid[..., 0] > 0)[:, None, None, :]  # keys only
    # Every group holds at least one real token (padding is < one group along each axis), so no row is all-masked.
    out = attend(qg, kg, vg, mask)  # (B*G, heads, n, hd)
    out = out.transpose(1, 2).reshape(bg, n, heads * hd)
    return unpartition(out, layout).reshape(b, x, y, z, heads, hd)


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Global attention over all tokens of a (B, X, Y, Z, heads, hd) grid; ``mask`` is (N, N) bool keep."""
    b, x, y, z, heads, hd = q.shape
    flat = [t.reshape(b, x * y * z, heads, hd).transpose(1, 2) for t in (q, k, v)]
    out = attend(*flat, mask)
    return out.transpose(1, 2).reshape(b, x, y, z, heads, hd)
