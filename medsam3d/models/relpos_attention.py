"""SAM-Med3D's attention with decomposed 3D relative positions, computed exactly and fast.

The published encoder (and FastSAM3D's student) pads the 8^3 token grid to one 14^3 window in its windowed
blocks and runs attention over 2,744 tokens, 2,232 of which are zero padding. The padding carries no image
content: after the block's LayerNorm it is zero, so its key is the qkv bias ``b_k`` and its value ``b_v``, and the
only thing that differs between padded keys is the relative-position term of their logits. That term is a sum of
per-axis pieces, so the softmax mass of all padded keys for one query has a closed form (a product of per-axis
sums, minus the real block). We append one "virtual" key with k = b_k, v = b_v and a per-query logit offset
equal to the log of that mass: the softmax over 512 + 1 keys then equals the reference's over 2,744, exactly.

Reference quirk reproduced here (SAM-Med3D ``add_decomposed_rel_pos``; FastSAM3D copies it): the per-axis
terms are indexed ``rel_d[:, :, :, :, None, None]``, ``rel_h[:, :, :, None, :, None]``,
``rel_w[:, :, :, None, None, :]`` against ``attn.view(B, qd, qh, qw, kd, kh, kw)``. Because the key axis of
each term is left last, all three line up with ``kw``, and the query's own w-axis lines up with ``kd`` (for h)
and ``kh`` (for w). Written out, the logit of query (qd, qh, qw) for key (kd, kh, kw) gets

    q[qd,qh,qw] . Rd[qd,kw]  +  q[qd,qh,kd] . Rh[qh,kw]  +  q[qd,qh,kh] . Rw[kh,kw]

where q[..] is the (unscaled) query vector at that window position (the q bias ``b_q`` at padded positions).
The published weights were trained with exactly this, so it is what we compute. It also requires cubic grids.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attend


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """(q_size, k_size, C) relative embeddings, linearly resized when the table was trained for another size."""
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos = F.interpolate(rel_pos.T[None], size=max_rel_dist, mode="linear")[0].T
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def _window_slices(n: int, window: int) -> list[slice]:
    return [slice(s, min(s + window, n)) for s in range(0, n, window)]


class RelPosAttention3D(nn.Module):
    """Multi-head self-attention with SAM-Med3D's decomposed relative positions (keys ``qkv``, ``proj``,
    ``rel_pos_{d,h,w}``).

    ``forward(x, window_size)`` takes normalised tokens (B, X, Y, Z, C); ``window_size`` 0 means global
    attention. ``padded_reference=True`` runs the straightforward padded-window formulation instead (the
    published code's math, kept as a baseline for benchmarks and tests).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, use_rel_pos: bool, rel_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_d = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))

    # ---------------------------------------------------------------- exact, without materialised padding
    def forward(self, x: torch.Tensor, window_size: int = 0, padded_reference: bool = False) -> torch.Tensor:
        b, nx, ny, nz, c = x.shape
        if len({nx, ny, nz}) != 1:
            raise ValueError(f"SAM-Med3D attention needs a cubic token grid, got {nx}x{ny}x{nz}")
        if padded_reference:
            return self._forward_padded(x, window_size)
        heads, hd = self.num_heads, self.head_dim
        qkv = self.qkv(x).view(b, nx, ny, nz, 3, heads, hd)
        window = window_size if window_size > 0 else nx
        out = x.new_empty(b, nx, ny, nz, heads, hd)
        for sx in _window_slices(nx, window):
            for sy in _window_slices(ny, window):
                for sz in _window_slices(nz, window):
                    out[:, sx, sy, sz] = self._attend_window(qkv[:, sx, sy, sz], window)
        return self.proj(out.view(b, nx, ny, nz, c))

    def _qkv_bias(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(heads, hd) each: what q, k, v are at a zero (padded) token."""
        if self.qkv.bias is None:
            zero = self.qkv.weight.new_zeros(self.num_heads, self.head_dim)
            return zero, zero, zero
        bq, bk, bv = self.qkv.bias.view(3, self.num_heads, self.head_dim).unbind(0)
        return bq, bk, bv

    def _attend_window(self, qkv: torch.Tensor, window: int) -> torch.Tensor:
        """One window's real tokens (B, a, b, c, 3, heads, hd) -> (B, a, b, c, heads, hd).

        The window is ``window``^3 positions with real tokens in the corner box [0,a) x [0,b) x [0,c).
        """
        bsz, a, b, c = qkv.shape[:4]
        heads, hd = self.num_heads, self.head_dim
        n_real = a * b * c
        q, k, v = qkv.permute(4, 0, 5, 1, 2, 3, 6).unbind(0)  # each (B, heads, a, b, c, hd)
        bq, bk, bv = self._qkv_bias()
        padded = n_real < window**3

        bias = None  # (B, heads, n_real, n_real [+1])
        virtual_logit = None  # (B, heads, n_real): log of the padded keys' summed softmax weight (sans q.b_k)
        if self.use_rel_pos:
            rd = get_rel_pos(window, window, self.rel_pos_d)  # (W, W, hd), indexed [query pos, key pos]
            rh = get_rel_pos(window, window, self.rel_pos_h)
            rw = get_rel_pos(window, window, self.rel_pos_w)
            # q along the window's w-axis for each real (qd, qh), padded positions holding b_q: (B,h,a,b,W,hd)
            q_ext = torch.cat([q, bq[None, :, None, None, None, :].expand(bsz, heads, a, b, window - c, hd)], 4)
            term_d = torch.einsum("nhabcx,akx->nhabck", q, rd[:a])  # [qd,qh,qw, kw]
            term_h = torch.einsum("nhabyx,bkx->nhabyk", q_ext, rh[:b])  # [qd,qh, kd, kw]
            term_w = torch.einsum("nhabyx,ykx->nhabyk", q_ext, rw)  # [qd,qh, kh, kw]
            bias = (
                term_d[..., None, None, :c]  # (.., qw, 1, 1, kw)
                + term_h[:, :, :, :, None, :a, None, :c]  # (.., 1, kd, 1, kw)
                + term_w[:, :, :, :, None, None, :b, :c]  # (.., 1, 1, kh, kw)
            ).reshape(bsz, heads, n_real, n_real)
            if padded:
                virtual_logit = self._padding_logit(term_d, term_h, term_w, a, b, c).reshape(bsz, heads, n_real)
        elif padded:
            n_pad = window**3 - n_real
            virtual_logit = q.new_full((bsz, heads, n_real), math.log(n_pad))

        q, k, v = (t.reshape(bsz, heads, n_real, hd) for t in (q, k, v))
        if padded:
            k = torch.cat([k, bk[None, :, None, :].expand(bsz, heads, 1, hd)], 2)
            v = torch.cat([v, bv[None, :, None, :].expand(bsz, heads, 1, hd)], 2)
            if bias is None:
                bias = q.new_zeros(bsz, heads, n_real, n_real)
            bias = torch.cat([bias, virtual_logit[..., None]], -1)
        out = attend(q, k, v, bias)  # (B, heads, n_real, hd)
        return out.view(bsz, heads, a, b, c, hd).permute(0, 2, 3, 4, 1, 5)

    @staticmethod
    def _padding_logit(term_d, term_h, term_w, a: int, b: int, c: int) -> torch.Tensor:
        """log sum over padded keys of exp(relative-position logit), per real query: (B, heads, a, b, c).

        Padded keys are (kd, kh, kw) outside [0,a) x [0,b) x [0,c). For a fixed kw the (kd, kh) sum factorises
        into (sum over kd of e^term_h) * (sum over kh of e^term_w); for kw < c the real block is left out as
        pad_d * all_h + real_d * pad_h, which has no cancellation.
        """
        neg_inf = term_h.new_tensor(float("-inf"))

        def split_lse(term: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            real = torch.logsumexp(term[..., :n, :], dim=-2)  # (B, heads, a, b, W[kw])
            pad = torch.logsumexp(term[..., n:, :], dim=-2) if n < term.shape[-2] else neg_inf.expand_as(real)
            return real, pad, torch.logaddexp(real, pad)

        h_real, h_pad, h_all = split_lse(term_h, a)
        w_real, w_pad, w_all = split_lse(term_w, b)
        log_g = h_all + w_all  # kw >= c: every (kd, kh) is padding
        log_g_real_kw = torch.logaddexp(h_pad + w_all, h_real + w_pad)  # kw < c: leave out the real block
        log_g = torch.cat([log_g_real_kw[..., :c], log_g[..., c:]], -1)
        return torch.logsumexp(term_d + log_g[:, :, :, :, None, :], dim=-1)

    # ---------------------------------------------------------------- padded baseline (the published math)
    def _forward_padded(self, x: torch.Tensor, window_size: int) -> torch.Tensor:
        """Straightforward formulation: pad to whole windows, attend over every padded position, crop."""
        b, nx, ny, nz, c = x.shape
        window = window_size if window_size > 0 else nx
        pad = (window - nx % window) % window
        xp = F.pad(x, (0, 0, 0, pad, 0, pad, 0, pad)) if pad else x
        n = (nx + pad) // window
        xw = xp.view(b, n, window, n, window, n, window, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
        xw = xw.reshape(-1, window, window, window, c)
        nw = xw.shape[0]
        heads, hd = self.num_heads, self.head_dim
        qkv = self.qkv(xw).reshape(nw, window**3, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, nw * heads, window**3, hd).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            rd = get_rel_pos(window, window, self.rel_pos_d)
            rh = get_rel_pos(window, window, self.rel_pos_h)
            rw = get_rel_pos(window, window, self.rel_pos_w)
            r_q = q.reshape(nw * heads, window, window, window, hd)
            rel_d = torch.einsum("bdhwc,dkc->bdhwk", r_q, rd)
            rel_h = torch.einsum("bdhwc,hkc->bdhwk", r_q, rh)
            rel_w = torch.einsum("bdhwc,wkc->bdhwk", r_q, rw)
            attn = attn.view(nw * heads, *(window,) * 6)
            # SAM-Med3D's broadcast, verbatim in effect: every term's key axis lines up with kw (module docstring)
            attn = attn + rel_d[:, :, :, :, None, None] + rel_h[:, :, :, None, :, None] + rel_w[:, :, :, None, None, :]
            attn = attn.view(nw * heads, window**3, window**3)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).view(nw, heads, window, window, window, hd).permute(0, 2, 3, 4, 1, 5)
        out = self.proj(out.reshape(nw, window, window, window, c))
        out = out.view(b, n, n, n, window, window, window, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
        out = out.reshape(b, n * window, n * window, n * window, c)
        return out[:, :nx, :ny, :nz]
