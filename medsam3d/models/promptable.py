"""``PromptableModel3D``: image encoder + prompt encoder + mask decoder behind one ``encode``/``decode`` interface.

Every model family (SAM-Med3D, FastSAM3D, medsam3d-tiny) is one of these; only the image encoder and sizes differ.
Inputs are checked here, once, so every caller (Segmenter, trainer, evaluator, serve worker) gets the same clear ``InputError``
(a ``ValueError``) instead of a shape error from deep inside a layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .base import ImageEncoder
from .config import PromptDecoderConfig
from .guidance import decoder_guidance
from .mask_decoder import MaskDecoder3D
from .prompt_encoder import PromptEncoder3D, prompt_tokens


class ImageFeatures(NamedTuple):
    """What ``encode`` returns and ``decode`` takes: cache it to make further clicks cost only the decoder."""

    embedding: torch.Tensor  # (B, C, g, g, g)
    skips: tuple[torch.Tensor, ...] = ()  # encoders with a conv stem: (B, c8, 2g, ..), (B, c4, 4g, ..)
    # [, (B, C/16, 8g, ..) with fine_output]


Features = Union[ImageFeatures, torch.Tensor]  # a bare tensor is an embedding without skips


class PromptableModel3D(nn.Module):
    def __init__(self, name: str, config: PromptDecoderConfig, image_encoder: ImageEncoder) -> None:
        super().__init__()
        self.name = name
        self.config = config
        self.image_encoder = image_encoder
        grid = config.img_size // config.patch_size
        dim = config.prompt_dim
        if dim != config.out_chans:
            raise ValueError(f"prompt_embed_dim ({dim}) must equal the encoder's out_chans ({config.out_chans})")
        self.prompt_encoder = PromptEncoder3D(dim, (grid,) * 3, (config.img_size,) * 3, config.mask_in_chans,
                                              config.box_prompts, config.reference_pe)
        stem = tuple(config.stem_chans or ())  # channels of a conv stem at S/2, S/4, S/8; () without one
        self.mask_decoder = MaskDecoder3D(dim, config.num_multimask_outputs, config.iou_head_depth,
                                          config.iou_head_hidden_dim, config.decoder_depth, config.decoder_mlp_dim,
                                          config.decoder_heads, config.attention_downsample_rate,
                                          skip_chans=stem[:0:-1],  # (S/8, S/4): the order the decoder adds them
                                          guidance=bool(stem) and bool(config.guidance_maps),
                                          mask_iou_head=config.mask_iou_head,
                                          fine_output=bool(config.fine_output))
        # where each part's weights came from: "random" until a checkpoint fills it (see checkpoint.py)
        self.weight_sources: dict[str, str] = {p: "random" for p in ("image_encoder", "prompt_encoder", "mask_decoder")}

    # ------------------------------------------------------------------ public interface
    @property
    def low_res_size(self) -> int:
        """Side of the logits ``decode`` returns and ``mask_input`` takes: S/4, or S/2 with ``fine_output``."""
        return self.config.img_size // (2 if self.mask_decoder.fine_head is not None else 4)

    @property
    def is_trained(self) -> bool:
        """True when every part was loaded from a checkpoint (a random-weight model never answers a user)."""
        return all(src != "random" for src in self.weight_sources.values())

    def multimask_for(self, lone_click: bool) -> bool:
        """Decode policy: answer this prompt set with the M multimask outputs and keep the best-scored one?

        ``lone_click``: the prompts are one click and nothing else (no box, no previous mask)."""
        return bool(self.config.multimask_refine or (lone_click and self.config.first_click_multimask))

    def skipped_checkpoint_keys(self, keys: Iterable[str]) -> list[str]:
        """The ``keys`` of a checkpoint that loading skips on purpose: parts this model does not build.

        The one such part: SAM's token IoU head (``mask_decoder.iou_prediction_head.*``) in a model whose masks
        are scored by ``mask_iou_head``, where it would never run. Weights saved while it was still built
        (medsam3d/weights/default.pt among them) hold it; every other key still loads strictly."""
        if self.mask_decoder.iou_prediction_head is not None:
            return []
        return [k for k in keys if k.startswith("mask_decoder.iou_prediction_head.")]

    def encode(self, image: torch.Tensor) -> ImageFeatures:
        """Normalised crop (B, 1, S, S, S) -> image embedding (B, C, S/16, S/16, S/16) and any skip maps."""
        self._check_image(image)
        out = self.image_encoder(image)
        if isinstance(out, torch.Tensor):
            return ImageFeatures(out)
        return ImageFeatures(out[0], tuple(out[1:]))

    def decode(
        self,
        features: Features,  # from encode (batch B or 1); a bare (B | 1, C, g, g, g) embedding for models without skips
        points: Optional[torch.Tensor] = None,  # (B, N, 3) voxel coordinates in the crop, image-tensor axis order
        labels: Optional[torch.Tensor] = None,  # (B, N): 1 positive, 0 negative
        boxes: Optional[torch.Tensor] = None,  # (B, 6): (a0, b0, c0, a1, b1, c1) corners, inclusive
        mask_input: Optional[torch.Tensor] = None,  # (B, 1, L, L, L) logits of a previous prediction, L = low_res_size
        multimask_output: bool = False,
        keep_best: bool = False,  # only the mask with the highest predicted IoU: (B, 1, ..) and (B, 1)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> low-res logits (B, 1 | M, L, L, L), L = ``low_res_size``, and predicted IoU (B, 1 | M)."""
        features = features if isinstance(features, ImageFeatures) else ImageFeatures(features)
        embedding = features.embedding
        batch = self._check_prompts(embedding, points, labels, boxes, mask_input)
        wanted = len(self.mask_decoder.skip_chans) + (self.mask_decoder.fine_head is not None)
        if len(features.skips) != wanted:
            raise InputError(f"{self.name} needs the {wanted} skip map(s) that encode "
                             f"returns; got {len(features.skips)} (pass encode's output to decode unchanged)")
        coords, token_labels = prompt_tokens(points, labels, boxes, batch)
        has_mask = torch.full((batch,), mask_input is not None, device=embedding.device)
        if mask_input is None:
            mask_input = embedding.new_zeros(batch, 1, *(self.low_res_size,) * 3)
        return self.decode_tensors(embedding, features.skips, coords.to(embedding.device),
                                   token_labels.to(embedding.device), mask_input, has_mask, multimask_output,
                                   keep_best)

    def decode_tensors(
        self,
        embedding: torch.Tensor,  # (B | 1, C, g, g, g)
        skips: tuple[torch.Tensor, ...],  # as encode returns them; () for models without a stem
        coords: torch.Tensor,  # (B, T, 3) prompt tokens' crop voxel coordinates (prompt_encoder.prompt_tokens)
        labels: torch.Tensor,  # (B, T) int: 1 / 0 positive / negative click, 2 / 3 box corners, -1 padding
        mask_input: torch.Tensor,  # (B, 1, L, L, L) previous logits; anything where has_mask is False
        has_mask: torch.Tensor,  # (B,) bool: whether mask_input is a mask prompt
        multimask_output: bool | torch.Tensor = False,  # a bool tensor is allowed with keep_best
        keep_best: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``decode`` after its input checks: a pure tensor function with no branch on the values and shapes
        fixed by the model (the number of tokens T is the only free size), so it traces and exports to ONNX.
        -> low-res logits (B, 1 | M, L, L, L) and predicted IoU (B, 1 | M)."""
        batch = labels.shape[0]
        if self.mask_decoder.fine_head is not None:
            mask_input = F.avg_pool3d(mask_input, 2)  # S/2 logits -> the S/4 grid the prompt encoder reads
        sparse = self.prompt_encoder.embed_tokens(coords, labels)
        dense = self.prompt_encoder.embed_mask(mask_input, has_mask)
        image_pe = self.prompt_encoder.get_dense_pe()
        guidance = None
        fusion = self.mask_decoder.skip_fusion
        if fusion is not None and fusion.guidance_in is not None:
            guidance = decoder_guidance(skips[1], coords, labels, mask_input, batch, self.config.img_size,
                                        has_mask)
        return self.mask_decoder(embedding, image_pe, sparse, dense, multimask_output, skips, guidance,
                                 keep_best=keep_best)

    def forward(self, image: torch.Tensor, **prompts) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.encode(image), **prompts)

    # ------------------------------------------------------------------ input checks
    def _check_image(self, image: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(image, torch.Tensor):
            raise InputError(f"image must be a torch.Tensor, got {type(image).__name__}")
        if image.dim() != 5:
            raise InputError(f"image must be 5D (B, {cfg.in_chans}, S, S, S), got shape {tuple(image.shape)}")
        if image.shape[1] != cfg.in_chans:
            raise InputError(f"image must have {cfg.in_chans} channel(s), got {image.shape[1]} "
                             f"(shape {tuple(image.shape)})")
        spatial = tuple(image.shape[2:])
        if spatial != (cfg.img_size,) * 3:
            raise InputError(f"image crop must be {cfg.img_size}^3, got spatial size {spatial}")
        if not image.is_floating_point():
            raise InputError(f"image must be floating point (normalised intensities), got {image.dtype}")
        if not torch.isfinite(image).all():
            raise InputError("image contains NaN or infinite values")

    def _check_prompts(self, embedding, points, labels, boxes, mask_input) -> int:
        cfg = self.config
        grid = cfg.img_size // cfg.patch_size
        if not isinstance(embedding, torch.Tensor) or embedding.dim() != 5 or embedding.shape[1] != cfg.prompt_dim:
            shape = tuple(embedding.shape) if isinstance(embedding, torch.Tensor) else type(embedding).__name__
            raise InputError(f"embedding must be (B, {cfg.prompt_dim}, {grid}, {grid}, {grid}), got {shape}")
        if tuple(embedding.shape[2:]) != (grid,) * 3:
            raise InputError(f"embedding grid must be {grid}^3, got {tuple(embedding.shape[2:])}")
        batches = []
        size = cfg.img_size
        if (points is None) != (labels is None):
            raise InputError("points and labels must be given together")
        if points is not None:
            if points.dim() != 3 or points.shape[-1] != 3:
                raise InputError(f"points must be (B, N, 3), got shape {tuple(points.shape)}")
            if labels.shape != points.shape[:2]:
                raise InputError(f"labels must be (B, N) = {tuple(points.shape[:2])}, got {tuple(labels.shape)}")
            if not torch.isfinite(points).all():
                raise InputError("points contain NaN or infinite values")
            if ((points < 0) | (points >= size)).any():
                bad = points[((points < 0) | (points >= size)).any(-1)][0].tolist()
                raise InputError(f"point {bad} is outside the {size}^3 crop (coordinates must be in [0, {size}))")
            bad_labels = set(torch.unique(labels).tolist()) - {0, 1}
            if bad_labels:
                raise InputError(f"labels must be 1 (positive) or 0 (negative), got {sorted(bad_labels)}")
            batches.append(points.shape[0])
        if boxes is not None:
            if not cfg.box_prompts:
                raise InputError(f"{self.name} takes no box prompts (its checkpoints have no box embeddings)")
            if boxes.dim() != 2 or boxes.shape[-1] != 6:
                raise InputError(f"boxes must be (B, 6) corner pairs, got shape {tuple(boxes.shape)}")
            if not torch.isfinite(boxes).all() or ((boxes < 0) | (boxes >= size)).any():
                raise InputError(f"box corners must be finite and inside the {size}^3 crop")
            if (boxes[:, :3] > boxes[:, 3:]).any():
                raise InputError("box must be (a0, b0, c0, a1, b1, c1) with each first corner <= second")
            batches.append(boxes.shape[0])
        if mask_input is not None:
            want = (1,) + (self.low_res_size,) * 3
            if mask_input.dim() != 5 or tuple(mask_input.shape[1:]) != want:
                raise InputError(f"mask_input must be (B, {', '.join(map(str, want))}), got {tuple(mask_input.shape)}")
            if not torch.isfinite(mask_input).all():
                raise InputError("mask_input contains NaN or infinite values")
            batches.append(mask_input.shape[0])
        if len(set(batches)) > 1:
            raise InputError(f"prompts disagree on batch size: {batches}")
        batch = batches[0] if batches else embedding.shape[0]
        if embedding.shape[0] not in (1, batch):
            raise InputError(f"embedding batch {embedding.shape[0]} must be 1 or the prompt batch {batch}")
        return batch
