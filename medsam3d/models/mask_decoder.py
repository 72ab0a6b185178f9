"""Two-way transformer mask decoder (SAM's, in 3D): image embedding + prompt tokens -> 32^3 logits and IoU
(64^3 with medsam3d-tiny's ``fine_output``).

Key layout follows SAM-Med3D's ``mask_decoder3D.py`` so its checkpoints load as published.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attend
from .common import MLP, LayerNorm3d, MLPBlock
from .guidance import GUIDANCE_CHANNELS


class TokenAttention(nn.Module):
    """Multi-head attention with an optional downscaled internal width (keys q_proj/k_proj/v_proj/out_proj)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"decoder_heads={num_heads} must divide the attention width {self.internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C/heads)
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = attend(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v)))
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class TwoWayAttentionBlock3D(nn.Module):
    """Self-attention of tokens, tokens->image, MLP on tokens, image->tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int, skip_first_layer_pe: bool):
        super().__init__()
        self.self_attn = TokenAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = TokenAttention(dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = TokenAttention(dim, num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):  # (B, Nt, C), (B, Ni, C), same, same
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer3D(nn.Module):
    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock3D(dim, num_heads, mlp_dim, downsample_rate, skip_first_layer_pe=i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = TokenAttention(dim, num_heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor):
        """image, image_pe: (B, C, X, Y, Z); tokens (B, Nt, C) -> tokens (B, Nt, C), image (B, XYZ, C)."""
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class SkipFusion3D(nn.Module):
    """U-Net-style additions to SAM's upscaling (medsam3d-tiny with a conv stem): after each transposed conv the
    encoder's map at that scale is projected (1x1x1) and added; at the S/4 end one residual 3x3x3 conv sees the
    upscaled features, optionally with the guidance maps (clicks, previous mask) concatenated."""

    def __init__(self, dim: int, skip_chans: tuple[int, int], guidance: bool) -> None:
        super().__init__()
        c8, c4 = skip_chans
        self.project8 = nn.Conv3d(c8, dim // 4, kernel_size=1)
        self.project4 = nn.Conv3d(c4, dim // 8, kernel_size=1)
        # the 5 guidance maps (guidance.py: click heatmaps, previous mask, feature similarity to the clicks) enter
        # through a 1x1x1 conv to 8 channels: besides giving them some width, this keeps
        # the 3x3x3 conv's input at >= 24 channels, where PyTorch's CPU conv takes its fast (oneDNN) path; at 19
        # channels and batch 1 it falls back to a much slower path (scripts/bench_encoders.py prints both)
        self.guidance_in = nn.Conv3d(GUIDANCE_CHANNELS, 8, kernel_size=1) if guidance else None
        extra = 8 if guidance else 0
        self.refine = nn.Sequential(nn.Conv3d(dim // 8 + extra, dim // 8, kernel_size=3, padding=1), nn.GELU())


class FineMaskHead(nn.Module):
    """S/4 logits -> S/2 logits: the S/4 masks upsampled, plus a correction drawn from S/2 features.

    The S/4 features go up one more transposed conv and meet the stem's S/2 map (projected to this head's width
    by the encoder, ``TinyEncoder3D.fine_skip``, and added), as in the S/8 and S/4 steps; each mask token gets its
    own small hypernetwork that reads these features out, as SAM does at S/4. The hypernetworks' last layers start
    at zero, so a model trained at S/4 answers exactly as before (up to the trilinear upsampling) when the head is
    added, and the read-out learns from the first step (a gate in front of a random read-out would not: a random
    correction is uncorrelated with the error, so the gate's gradient averages out)."""

    def __init__(self, dim: int, num_mask_tokens: int) -> None:
        super().__init__()
        width = dim // 16
        self.upscale = nn.ConvTranspose3d(dim // 8, width, kernel_size=2, stride=2)
        self.hypernetworks = nn.ModuleList(MLP(dim, dim // 2, width, 2) for _ in range(num_mask_tokens))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero read-out: no correction until training makes one (``train.reinit`` calls this after the layers')."""
        for mlp in self.hypernetworks:
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)

    def forward(self, coarse: torch.Tensor, upscaled: torch.Tensor, s2: torch.Tensor, tokens: torch.Tensor,
                token_ids: torch.Tensor) -> torch.Tensor:
        """coarse (B, T, L, L, L) logits, upscaled (B, dim/8, L, ..), s2 (B|1, dim/16, 2L, ..), tokens (B, K, dim)
        the outputs of all K mask tokens, token_ids (B, T) which token each coarse mask came from ->
        (B, T, 2L, 2L, 2L) logits. Only the T chosen masks are upsampled and corrected."""
        b = coarse.shape[0]
        feats = F.gelu(self.upscale(upscaled) + s2)  # (B, dim/16, 2L, ..)
        every = torch.stack([mlp(tokens[:, i]) for i, mlp in enumerate(self.hypernetworks)], dim=1)  # (B, K, dim/16)
        hyper = every.gather(1, token_ids[..., None].expand(-1, -1, every.shape[2]))  # (B, T, dim/16)
        detail = (hyper @ feats.flatten(2)).view(b, -1, *feats.shape[2:])
        return F.interpolate(coarse, scale_factor=2, mode="trilinear", align_corners=False) + detail


class MaskDecoder3D(nn.Module):
    def __init__(self, dim: int, num_multimask_outputs: int, iou_head_depth: int, iou_head_hidden_dim: int,
                 depth: int, mlp_dim: int, num_heads: int, downsample_rate: int,
                 skip_chans: tuple[int, ...] = (), guidance: bool = False,
                 mask_iou_head: bool = False, fine_output: bool = False) -> None:
        super().__init__()
        self.skip_chans = tuple(skip_chans)
        if self.skip_chans and len(self.skip_chans) != 2:
            raise ValueError(f"skip_chans must be (channels at S/8, channels at S/4), got {self.skip_chans}")
        if fine_output and not self.skip_chans:
            raise ValueError("fine_output needs the S/8 and S/4 skips of a stem encoder")
        self.skip_fusion = SkipFusion3D(dim, self.skip_chans, guidance) if self.skip_chans else None
        self.num_mask_tokens = num_multimask_outputs + 1
        # S/2 output from a third skip (the stem's S/2 map, dim/16 channels): see FineMaskHead
        self.fine_head = FineMaskHead(dim, self.num_mask_tokens) if fine_output else None
        self.transformer = TwoWayTransformer3D(depth, dim, num_heads, mlp_dim, downsample_rate)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm3d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose3d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        # predicted IoU: SAM's head on the IoU token, (M+1) scores at once, or with mask_iou_head one score per mask
        # from what it covers (features pooled inside it and over the window, log size; config.py). Only the head
        # used is built (older checkpoints hold both: PromptableModel3D.skipped_checkpoint_keys).
        self.iou_prediction_head = None if mask_iou_head else MLP(dim, iou_head_hidden_dim, self.num_mask_tokens,
                                                                  iou_head_depth)
        self.mask_iou_head = MLP(2 * (dim // 8) + 1, iou_head_hidden_dim, 1, iou_head_depth) if mask_iou_head else None

    def _score_masks(self, masks: torch.Tensor, upscaled: torch.Tensor) -> torch.Tensor:
        """masks (B, M+1, X, Y, Z) logits, upscaled (B, c, X, Y, Z) -> predicted IoU (B, M+1). The masks are
        detached: the IoU loss teaches the scorer, not the masks to please it."""
        weights = torch.sigmoid(masks.detach().float()).flatten(2)  # (B, M+1, V)
        feats = upscaled.float().flatten(2)  # (B, c, V)
        area = weights.sum(2, keepdim=True)  # (B, M+1, 1)
        inside = (weights @ feats.transpose(1, 2)) / area.clamp(min=1e-3)  # (B, M+1, c)
        window = feats.mean(2)[:, None].expand_as(inside)
        size = torch.log(area / weights.shape[2] + 1e-4)
        return self.mask_iou_head(torch.cat([inside, window, size], 2)).squeeze(2).to(masks.dtype)

    def _upscale(self, src: torch.Tensor, skips: tuple[torch.Tensor, ...],
                 guidance: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, C, X, Y, Z) -> (B, C/8, 4X, 4Y, 4Z): SAM's two transposed convs, plus skips where there are any."""
        if self.skip_fusion is None:
            return self.output_upscaling(src)
        up = self.output_upscaling
        fusion = self.skip_fusion
        b = src.shape[0]
        s8, s4 = (s.expand(b, -1, -1, -1, -1) for s in skips[:2])  # (a third, S/2, is the fine head's)
        x = up[2](up[1](up[0](src) + fusion.project8(s8)))  # convT, + skip, LayerNorm3d, GELU
        x = up[3](x) + fusion.project4(s4)  # convT, + skip
        x = up[4](x)  # GELU
        refine_in = x if guidance is None else torch.cat([x, fusion.guidance_in(guidance)], dim=1)
        return x + fusion.refine(refine_in)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor, multimask_output: bool | torch.Tensor, skips: tuple[torch.Tensor, ...] = (),
                guidance: Optional[torch.Tensor] = None, keep_best: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings (B|1, C, X, Y, Z); sparse (B, N, C); dense (B, C, X, Y, Z); skips (B|1, c8, 2X, ..),
        (B|1, c4, 4X, ..) [and (B|1, C/16, 8X, ..) with fine_output] for a stem encoder; guidance
        (B, GUIDANCE_CHANNELS, 4X, ..) or None -> low-res logits (B, 1|M, 4X, 4Y, 4Z), 8X.. with fine_output, and
        IoU predictions (B, 1|M). ``keep_best`` returns only the mask with the highest predicted IoU, (B, 1, ..):
        what inference keeps anyway, and the fine head then corrects that one mask instead of all M. With
        ``keep_best`` ``multimask_output`` may be a bool tensor (an input of an exported graph)."""
        b = sparse.shape[0]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens[None].expand(b, -1, -1), sparse], dim=1)
        src = image_embeddings.expand(b, -1, -1, -1, -1) + dense
        pos = image_pe.expand(b, -1, -1, -1, -1)
        _, c, x, y, z = src.shape
        hs, src = self.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]
        upscaled = self._upscale(src.transpose(1, 2).reshape(b, c, x, y, z), skips, guidance)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, M+1, C/8)
        _, cu, ux, uy, uz = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, cu, ux * uy * uz)).view(b, -1, ux, uy, uz)
        if self.mask_iou_head is not None:
            iou_pred = self._score_masks(masks, upscaled)  # (B, M+1)
        else:
            iou_pred = self.iou_prediction_head(iou_token_out)  # (B, M+1)
        if keep_best:  # one mask per sample: the best-scored of the multimask outputs, or the single-mask output
            token_ids = best_token(iou_pred, multimask_output)  # (B, 1)
            iou_pred = iou_pred.gather(1, token_ids)
            masks = masks.gather(1, token_ids[..., None, None, None].expand(-1, -1, *masks.shape[2:]))
        else:
            chosen = slice(1, None) if multimask_output else slice(0, 1)
            masks, iou_pred = masks[:, chosen], iou_pred[:, chosen]
            token_ids = torch.arange(chosen.start, chosen.start + masks.shape[1], device=masks.device).expand(b, -1)
        if self.fine_head is not None:  # after the scoring at S/4, as trained before the head existed
            masks = self.fine_head(masks, upscaled, skips[2], mask_tokens_out, token_ids)
        return masks, iou_pred


def best_token(iou_pred: torch.Tensor, multimask_output: bool | torch.Tensor) -> torch.Tensor:
    """iou_pred (B, M+1) -> (B, 1) index of the mask token to keep: the best-scored of tokens 1..M with
    ``multimask_output``, token 0 without. No branch on the values, so it traces with a tensor flag; ties go to
    the lowest index, as ``argmax`` over the chosen slice did."""
    index = torch.arange(iou_pred.shape[1], device=iou_pred.device)
    multimask = torch.as_tensor(multimask_output, device=iou_pred.device).to(torch.bool).reshape(-1, 1)
    allowed = (multimask & (index >= 1)) | (~multimask & (index == 0))  # (B | 1, M+1); logic ops, not a bool
    # Where, which ONNX Runtime's CPU provider has no kernel for
    return iou_pred.masked_fill(~allowed, float("-inf")).argmax(1, keepdim=True)
