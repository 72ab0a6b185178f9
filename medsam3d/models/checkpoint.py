"""Reading checkpoints in their published layouts and loading them strictly, with errors that help.

Accepted: a path or an in-memory dict; a raw state_dict or one wrapped in ``model_state_dict`` (SAM-Med3D's
training checkpoints), ``state_dict`` or ``model`` (medsam3d's own); DDP's ``module.`` prefix is dropped.
A mismatch names the missing and unexpected keys and what architecture the checkpoint's keys suggest.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from ..errors import InputError
from .base import registered_models

StateDict = dict[str, torch.Tensor]
CheckpointSource = Union[str, Path, Mapping]

_WRAPPERS = ("model_state_dict", "state_dict", "model")


def half_state(state: StateDict) -> StateDict:
    """Floating-point tensors as float16, the rest as they are: how shipped and kept weights are stored (half the
    size; they load into float32 models)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def read_state_dict(source: CheckpointSource) -> StateDict:
    """Path or dict -> flat {key: tensor}, unwrapped and without ``module.`` prefixes."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"checkpoint not found: {path}")
        try:
            # SAM-Med3D's training checkpoints also pickle their argparse Namespace; allow that and nothing else
            with torch.serialization.safe_globals([argparse.Namespace]):
                source = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, corrupt or not a torch file
            raise InputError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(source, Mapping):
        raise InputError(f"checkpoint must be a state_dict (a mapping of names to tensors), got {type(source).__name__}")
    for key in _WRAPPERS:
        inner = source.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            source = inner
            break
    state = {}
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor: not a state_dict")
        state[key[len("module."):] if key.startswith("module.") else key] = value
    if not state:
        raise InputError("checkpoint holds no tensors")
    return state


def sub_state_dict(state: StateDict, prefix: str) -> StateDict:
    """The entries under ``prefix`` (e.g. 'image_encoder.'), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def block_indices(encoder_state: Mapping[str, Any]) -> list[int]:
    """Sorted indices ``i`` of the ``blocks.i.*`` entries of an image encoder's state_dict (keys without prefix)."""
    return sorted({int(m.group(1)) for k in encoder_state if (m := re.match(r"blocks\.(\d+)\.", k))})


def describe_architecture(state: StateDict) -> str:
    """A short guess at what model a state_dict belongs to, from its key names and shapes."""
    parts = []
    enc = sub_state_dict(state, "image_encoder.") or state
    blocks = block_indices(enc)
    embed = enc["pos_embed"].shape[-1] if "pos_embed" in enc else None
    if blocks:
        kinds = (entry.recognise(enc) for entry in registered_models() if entry.recognise is not None)
        kind = next((k for k in kinds if k), "an image encoder of no known family")
        parts.append(f"{kind} with embed_dim={embed}, depth={len(blocks)}")
    if any(k.startswith("mask_decoder.") for k in state):
        dim = state.get("mask_decoder.iou_token.weight")
        parts.append(f"a mask decoder of width {dim.shape[-1] if dim is not None else '?'}")
    elif not any(k.startswith("image_encoder.") for k in state):
        parts.append("no prompt encoder or mask decoder (encoder-only keys)")
    return "; ".join(parts) if parts else "no recognisable medsam3d/SAM-Med3D keys"


def _preview(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_into(module: nn.Module, state: StateDict, what: str, strict: bool = True,
              full_state: StateDict | None = None) -> None:
    """Copy ``state`` into ``module``; on a strict mismatch raise one sentence naming keys and architecture."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong_shape or (strict and (missing or unexpected)):
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {_preview(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} shape mismatch(es) (checkpoint vs model): {_preview(wrong_shape, 2)}")
        raise InputError(
            f"checkpoint does not fit {what}: {'; '.join(problems)}. "
            f"The checkpoint looks like {describe_architecture(full_state or state)}."
        )
    with torch.no_grad():
        for key, value in state.items():
            if key in expected:
                expected[key].copy_(value.to(expected[key].dtype))


def summarize(state: Mapping[str, Any]) -> dict[str, list[int]]:
    """{key: shape} of a state_dict, as in ``../shared/reference/*.keys.json``."""
    return {k: list(v.shape) for k, v in state.items()}
