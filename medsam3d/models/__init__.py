"""Models: ``build_model(name, checkpoint=..., **config)``.

The model families are registered below, once each (``base.ModelEntry``: name, aliases, config class, encoder,
description); ``available_models()`` and ``models_help()`` list them. ``name`` may also be a YAML file
(``configs/models/*.yaml``) holding ``model: NAME`` and config keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from ..errors import InputError
from . import fastsam3d_encoder, tiny_encoder, vit_encoder
from .base import ImageEncoder, ModelEntry, available_models, model_entry, models_help, register_model
from .checkpoint import CheckpointSource, half_state, load_into, read_state_dict, sub_state_dict
from .config import FastSam3DConfig, SamMed3DConfig, TinyConfig, config_dict, make_config
from .promptable import PromptableModel3D

# The model families, in the order available_models() lists them. A new family: its config dataclass (config.py),
# its image encoder (an ImageEncoder), and one entry here.
register_model(ModelEntry(
    "sam-med3d", SamMed3DConfig, vit_encoder.ViTEncoder3D,
    "SAM-Med3D(-turbo): ViT-B 3D encoder, windowed and global attention; SAM-Med3D checkpoints, whole model",
    aliases=("sam_med3d", "sammed3d", "sam-med3d-turbo", "vit_b_ori"), recognise=vit_encoder.recognise,
))
register_model(ModelEntry(
    "fastsam3d", FastSam3DConfig, fastsam3d_encoder.FastSam3DEncoder,
    "FastSAM3D's released student encoder; prompt encoder and decoder from a SAM-Med3D checkpoint",
    aliases=("fast-sam3d",), recognise=fastsam3d_encoder.recognise, encoder_only_checkpoints=True,
))
register_model(ModelEntry(
    "medsam3d-tiny", TinyConfig, tiny_encoder.TinyEncoder3D,
    "medsam3d's CPU-first student: conv stem, sparse 3D attention; medsam3d's own checkpoints",
    aliases=("tiny",), recognise=tiny_encoder.recognise,
))

_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


def _resolve(name: str, config: dict[str, Any]) -> tuple[ModelEntry, dict[str, Any]]:
    if str(name).endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise InputError(f"model config not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict) or "model" not in data:
            raise InputError(f"model config {path} must be a mapping with a 'model:' key")
        name = data.pop("model")
        config = {**data, **config}
    return model_entry(name), config


def build_model(
    name: str = "sam-med3d",
    checkpoint: Optional[CheckpointSource] = None,
    decoder_checkpoint: Optional[CheckpointSource] = None,
    strict: bool = True,
    device: str | torch.device = "cpu",
    **config: Any,
) -> PromptableModel3D:
    """Build a model from its name (or YAML config) and keyword config, and load its weights.

    ``checkpoint`` is a path or a state_dict in the published layout. For ``fastsam3d`` it may be the released
    encoder-only state_dict; the prompt encoder and decoder then come from ``decoder_checkpoint`` (a SAM-Med3D
    checkpoint). Parts without weights stay random and ``model.is_trained`` says so.
    """
    entry, config = _resolve(name, config)
    try:
        cfg = make_config(entry.name, config)
        model = PromptableModel3D(entry.name, cfg, entry.encoder(cfg))
    except (TypeError, ValueError) as exc:
        raise InputError(f"invalid config for {entry.name}: {exc}") from None
    if checkpoint is not None:
        _load(model, _usable(model, read_state_dict(checkpoint)), strict, entry.encoder_only_checkpoints)
    if decoder_checkpoint is not None:
        state = _usable(model, read_state_dict(decoder_checkpoint))
        for part in ("prompt_encoder", "mask_decoder"):
            sub = sub_state_dict(state, part + ".")
            if not sub:
                raise InputError(f"decoder_checkpoint has no {part}.* keys")
            load_into(getattr(model, part), sub, f"{entry.name}'s {part}", strict, state)
            model.weight_sources[part] = "checkpoint"
    return model.to(device).eval()


def _usable(model: PromptableModel3D, state: dict) -> dict:
    """``state`` without the entries the model skips on purpose (``PromptableModel3D.skipped_checkpoint_keys``)."""
    skipped = set(model.skipped_checkpoint_keys(state))
    return {k: v for k, v in state.items() if k not in skipped} if skipped else state


def _load(model: PromptableModel3D, state: dict, strict: bool, encoder_only_ok: bool) -> None:
    what = f"{model.name} (embed_dim={model.config.embed_dim}, depth={len(model.image_encoder.blocks)})"
    has_parts = any(k.startswith(p + ".") for k in state for p in _PARTS)
    if not has_parts and encoder_only_ok:  # FastSAM3D's release: the encoder's keys without a prefix
        load_into(model.image_encoder, state, f"{what}'s image encoder", strict)
        model.weight_sources["image_encoder"] = "checkpoint"
        return
    load_into(model, state, what, strict)
    for part in _PARTS:
        if any(k.startswith(part + ".") for k in state):
            model.weight_sources[part] = "checkpoint"


__all__ = ["build_model", "available_models", "models_help", "register_model", "ModelEntry", "ImageEncoder",
           "PromptableModel3D", "config_dict", "read_state_dict", "half_state"]
