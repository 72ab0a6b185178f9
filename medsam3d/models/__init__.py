"""Model registry: ``build_model(name, checkpoint=..., **config)``.

| name | image encoder | checkpoints |
|---|---|---|
| ``sam-med3d`` | SAM-Med3D ViT-B 3D (windowed + global blocks) | SAM-Med3D / SAM-Med3D-turbo, whole model |
| ``fastsam3d`` | FastSAM3D's released student | student encoder; decoder from a SAM-Med3D checkpoint |
| ``medsam3d-tiny`` | our sparse-attention student | medsam3d's own |

``name`` may also be a YAML file (``configs/models/*.yaml``) holding ``model: NAME`` and config keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from ..errors import InputError
from .checkpoint import CheckpointSource, half_state, load_into, read_state_dict, sub_state_dict
from .config import MODEL_CONFIGS, config_dict, make_config
from .fastsam3d_encoder import FastSam3DEncoder
from .promptable import PromptableModel3D
from .tiny_encoder import TinyEncoder3D
from .vit_encoder import ViTEncoder3D

_ALIASES = {"sam_med3d": "sam-med3d", "sammed3d": "sam-med3d", "sam-med3d-turbo": "sam-med3d",
            "vit_b_ori": "sam-med3d", "fast-sam3d": "fastsam3d", "tiny": "medsam3d-tiny"}
_ENCODERS = {"sam-med3d": ViTEncoder3D, "fastsam3d": FastSam3DEncoder, "medsam3d-tiny": TinyEncoder3D}
_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


def available_models() -> list[str]:
    return list(MODEL_CONFIGS)


def _resolve(name: str, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if str(name).endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise InputError(f"model config not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict) or "model" not in data:
            raise InputError(f"model config {path} must be a mapping with a 'model:' key")
        name = data.pop("model")
        config = {**data, **config}
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in MODEL_CONFIGS:
        raise InputError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return key, config


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
    key, config = _resolve(name, config)
    try:
        cfg = make_config(key, config)
        model = PromptableModel3D(key, cfg, _ENCODERS[key](cfg))
    except (TypeError, ValueError) as exc:
        raise InputError(f"invalid config for {key}: {exc}") from None
    if checkpoint is not None:
        _load(model, read_state_dict(checkpoint), strict, encoder_only_ok=key == "fastsam3d")
    if decoder_checkpoint is not None:
        state = read_state_dict(decoder_checkpoint)
        for part in ("prompt_encoder", "mask_decoder"):
            sub = sub_state_dict(state, part + ".")
            if not sub:
                raise InputError(f"decoder_checkpoint has no {part}.* keys")
            load_into(getattr(model, part), sub, f"{key}'s {part}", strict, state)
            model.weight_sources[part] = "checkpoint"
    return model.to(device).eval()


def _load(model: PromptableModel3D, state: dict, strict: bool, encoder_only_ok: bool) -> None:
    what = f"{model.name} ({_shape_words(model)})"
    has_parts = any(k.startswith(p + ".") for k in state for p in _PARTS)
    if not has_parts and encoder_only_ok:  # FastSAM3D's release: the encoder's keys without a prefix
        load_into(model.image_encoder, state, f"{what}'s image encoder", strict)
        model.weight_sources["image_encoder"] = "checkpoint"
        return
    load_into(model, state, what, strict)
    for part in _PARTS:
        if any(k.startswith(part + ".") for k in state):
            model.weight_sources[part] = "checkpoint"


def _shape_words(model: PromptableModel3D) -> str:
    cfg = model.config
    depth = getattr(cfg, "depth", None) or cfg.conv_blocks + len(cfg.attn_blocks)
    return f"embed_dim={cfg.embed_dim}, depth={depth}"


__all__ = ["build_model", "available_models", "PromptableModel3D", "config_dict", "read_state_dict"]
