"""Attention kernels: exact padding-free windows == padded windows; sparse groups == masked dense attention."""

from __future__ import annotations

import pytest
import torch

from medsam3d.models import build_model
from medsam3d.models.attention import attend, dense_attention, flash_available, group_ids, grouped_attention
from medsam3d.models.relpos_attention import RelPosAttention3D

from conftest import SMALL_SAM


def randomised_attention(dim=48, heads=4, qkv_bias=True, use_rel_pos=True, rel_size=14, seed=0):
    torch.manual_seed(seed)
    attn = RelPosAttention3D(dim, heads, qkv_bias, use_rel_pos, rel_size)
    with torch.no_grad():
        for p in attn.parameters():  # rel_pos is zero-initialised: make every term matter
            p.normal_(0, 0.3)
    return attn


@torch.no_grad()
@pytest.mark.parametrize(
    "grid,window,qkv_bias,use_rel_pos",
    [
        (8, 14, True, True),  # SAM-Med3D at 128^3: one 14^3 window holding an 8^3 block
        (16, 14, True, True),  # 256^3: 8 windows, real extents 14 and 2 mixed per axis
        (6, 4, True, True),  # several windows, partial along every axis
        (8, 0, True, True),  # global block
        (8, 14, False, True),  # no qkv bias: padded keys are exactly zero
        (8, 14, True, False),  # no relative positions: padding mass is a count
        (5, 5, True, True),  # window exactly the grid: no padding at all
    ],
)
def test_exact_window_attention_equals_padded_reference(grid, window, qkv_bias, use_rel_pos):
    # float64: the closed form is exact in mathematics, so any difference beyond rounding is a bug; in float32 the
    # two summation orders differ by up to ~2e-5 of outputs of size ~8, which varies with the CPU's kernels
    attn = randomised_attention(qkv_bias=qkv_bias, use_rel_pos=use_rel_pos, rel_size=window or grid).double()
    x = torch.randn(2, grid, grid, grid, 48, dtype=torch.float64)
    exact = attn(x, window)
    padded = attn(x, window, padded_reference=True)
    assert exact.shape == padded.shape == x.shape
    assert (exact - padded).abs().max().item() <= 1e-9 * padded.abs().max().item()


@torch.no_grad()
def test_exact_encoder_equals_padded_encoder_with_random_weights():
    torch.manual_seed(1)
    model = build_model("sam-med3d", **SMALL_SAM)
    for name, p in model.image_encoder.named_parameters():
        if "rel_pos" in name or "pos_embed" in name:
            p.data.normal_(0, 0.5)
    model.double()  # exact in mathematics: compare in float64, relative to the outputs' scale
    x = torch.randn(1, 1, 128, 128, 128, dtype=torch.float64)
    exact = model.encode(x).embedding
    model.image_encoder.padded_reference = True
    padded = model.encode(x).embedding
    assert (exact - padded).abs().max().item() <= 1e-9 * padded.abs().max().item()


def test_rel_pos_needs_cubic_grid():
    attn = randomised_attention()
    with pytest.raises(ValueError, match="cubic"):
        attn(torch.randn(1, 8, 8, 6, 48), 14)


def block_mask(grid, group, mode) -> torch.Tensor:
    ids = group_ids(grid, group, mode)
    return ids[:, None] == ids[None, :]


@torch.no_grad()
@pytest.mark.parametrize("mode", ["dilated", "window"])
@pytest.mark.parametrize("grid,group", [((8, 8, 8), (4, 4, 4)), ((6, 10, 7), (4, 3, 2)), ((16, 16, 16), (4, 4, 4))])
def test_sparse_attention_equals_dense_attention_with_block_mask(mode, grid, group):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, *grid, 3, 16) for _ in range(3))
    sparse = grouped_attention(q, k, v, group, mode)
    dense = dense_attention(q, k, v, block_mask(grid, group, mode))
    assert sparse.shape == q.shape
    assert (sparse - dense).abs().max().item() <= 1e-5


def test_group_structure():
    grid = (8, 8, 8)
    idx = lambda x, y, z: (x * 8 + y) * 8 + z  # noqa: E731
    dil = group_ids(grid, (4, 4, 4), "dilated")  # dilation 2 per axis: interleaved sub-grids of 4^3
    assert dil[idx(0, 0, 0)] == dil[idx(2, 4, 6)] != dil[idx(1, 0, 0)]
    assert dil[idx(0, 0, 0)] != dil[idx(0, 0, 1)]
    assert torch.bincount(dil).tolist() == [64] * 8
    win = group_ids(grid, (4, 4, 4), "window")  # contiguous 4^3 blocks
    assert win[idx(0, 0, 0)] == win[idx(3, 3, 3)] != win[idx(4, 0, 0)]
    assert torch.bincount(win).tolist() == [64] * 8
    odd = group_ids((6, 10, 7), (4, 3, 2), "dilated")
    assert odd.numel() == 420 and int(odd.min()) >= 0


def test_sparse_scatter_back_keeps_each_token_in_place():
    # with values that identify their token and one token per group, attention returns each token's own value
    grid = (4, 4, 4)
    v = torch.arange(64.0).view(1, *grid, 1, 1)
    q = k = torch.zeros_like(v)
    out = grouped_attention(q, k, v, (1, 1, 1), "dilated")
    assert torch.equal(out, v)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flash_path_matches_sdpa_on_cuda():
    if not flash_available("cuda", torch.float16):
        pytest.skip("flash-attn is not installed (pip install medsam3d[gpu])")
    q, k, v = (torch.randn(2, 6, 512, 32, device="cuda", dtype=torch.float16) for _ in range(3))
    flash = attend(q, k, v)
    reference = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert (flash.float() - reference).abs().max().item() <= 2e-3
