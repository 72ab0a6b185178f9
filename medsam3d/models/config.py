"""Architecture configs: every size of every model is a field here, and nowhere else.

Defaults are the published full-size architectures (SAM-Med3D-turbo's ViT-B, FastSAM3D's released student) and
medsam3d-tiny's chosen sizes. Field names are the keyword arguments of ``build_model`` and the keys of
``configs/models/*.yaml``; they follow the reference code's names where one exists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from .base import model_entry


class ConfigContract:
    """What ``PromptableModel3D`` reads of every family's config, typed once. Not a dataclass, so nothing here is a
    config key: the sizes are each family's own fields, and the options below are defaults for families that do not
    have them as fields (only ``TinyConfig`` does), so those neither store them (``config_dict``) nor accept them."""

    img_size: int
    patch_size: int
    in_chans: int
    embed_dim: int
    out_chans: int
    stem_chans: tuple[int, ...] = ()  # no conv stem: the decoder gets no skip maps
    guidance_maps: bool = False
    fine_output: bool = False


@dataclass
class PromptDecoderConfig(ConfigContract):
    """The 3D prompt encoder and two-way mask decoder shared by every model family."""

    prompt_embed_dim: Optional[int] = None  # None: the encoder's out_chans
    mask_in_chans: int = 16
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    attention_downsample_rate: int = 2
    box_prompts: bool = False  # two extra corner embeddings (SAM-Med3D's checkpoints have none)
    reference_pe: bool = True  # reproduce SAM-Med3D's positional-encoding quirks (prompt_encoder.py)
    # a lone click is ambiguous (a vertebra or the spine?): decode all multimask outputs and keep the one with the
    # highest predicted IoU. Only for models trained that way (training/interactive.py; configs/default/train.yaml
    # turns it on for medsam3d-tiny); SAM-Med3D was not, nor are distilled students.
    first_click_multimask: bool = False
    # decode every prompt set, not only a lone click, into the multimask outputs and keep the best-scored one
    # (a corrective click can break the single-mask output); training then puts the loss on the best of the M masks
    multimask_refine: bool = False
    # score each mask from what it covers (Mask Scoring R-CNN's idea): the upscaled features pooled under the mask,
    # pooled over the window, and its log size go through their own MLP (mask_decoder.mask_iou_head), instead of
    # SAM's IoU head on the IoU token, which is then not built. Off for published models.
    mask_iou_head: bool = False

    @property
    def prompt_dim(self) -> int:
        """Width of the prompt encoder and decoder: ``prompt_embed_dim``, else the encoder's ``out_chans``."""
        return self.prompt_embed_dim or self.out_chans


@dataclass
class SamMed3DConfig(PromptDecoderConfig):
    """SAM-Med3D(-turbo): ViT-B 3D encoder with windowed + global blocks, decomposed relative positions."""

    img_size: int = 128
    patch_size: int = 16
    in_chans: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    layernorm_eps: float = 1e-6
    out_chans: int = 384


@dataclass
class FastSam3DConfig(SamMed3DConfig):
    """FastSAM3D's released student: ``skip_layer`` attention-free blocks, then global-attention blocks."""

    depth: int = 6
    num_heads: int = 6
    window_size: int = 0
    global_attn_indexes: tuple[int, ...] = ()
    skip_layer: int = 2
    layeroutput: int = 2  # the reference returns the stream after every `layeroutput`-th block (distillation)


@dataclass
class TinyConfig(PromptDecoderConfig):
    """medsam3d-tiny: our CPU-first student (see ``tiny_encoder.py`` for the why of each choice)."""

    img_size: int = 128
    patch_size: int = 16
    in_chans: int = 1
    embed_dim: int = 192
    num_heads: int = 6
    mlp_ratio: float = 3.0
    conv_blocks: int = 2  # attention-free early blocks (depthwise 3D conv + MLP)
    attn_blocks: tuple[str, ...] = ("dilated", "window", "dilated", "window")
    group: int = 4  # tokens per axis in a dilated sub-grid or a local window
    layernorm_eps: float = 1e-6
    out_chans: int = 128
    # convolutional stem (U-Net encoder half): one stage per halving, S/2 .. S/8, then a 2^3 patchify to S/16.
    # Empty: a plain 16^3 patch embedding. The S/8 and S/4 stages feed the decoder as skip connections.
    stem_chans: tuple[int, ...] = (16, 32, 64)
    guidance_maps: bool = True  # the decoder's last conv also sees click heatmaps and the previous mask
    # a third upscaling step to S/2 (64^3 logits at 3 mm instead of 32^3 at 6 mm), fed by the stem's S/2 map: at
    # S/4 a small structure (a rib) is a handful of output voxels. Adds image_encoder.fine_skip and
    # mask_decoder.fine_head; the head starts as a no-op (zero read-out), so trained S/4 weights can continue with it.
    fine_output: bool = False
    # the decoder of a CPU model: narrower and shallower MLP than SAM-Med3D's
    decoder_mlp_dim: int = 512
    decoder_heads: int = 4
    iou_head_hidden_dim: int = 128
    box_prompts: bool = True
    reference_pe: bool = False


def make_config(name: str, overrides: dict[str, Any]):
    """Build the config of model ``name`` (a registered name or alias) with keyword overrides; unknown keys are an
    error naming them."""
    entry = model_entry(name)
    cls = entry.config
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(
            f"unknown config key(s) for {entry.name}: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    values = dict(overrides)
    for key in ("global_attn_indexes", "attn_blocks", "stem_chans"):
        if key in values and values[key] is not None:
            values[key] = tuple(values[key])
    return cls(**values)


def config_dict(cfg) -> dict[str, Any]:
    """Plain dict of a config (for checkpoints, reports and YAML)."""
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


__all__ = ["ConfigContract", "SamMed3DConfig", "FastSam3DConfig", "TinyConfig", "make_config", "config_dict"]
