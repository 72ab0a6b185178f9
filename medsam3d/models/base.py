"""What every model family provides, written once: the image-encoder contract and the registry of models.

A family is a config dataclass (``config.py``) and an image encoder; the prompt encoder and mask decoder are
shared (``PromptableModel3D``). ``models/__init__.py`` registers each family once (``register_model``), and
``build_model``, ``available_models``, ``make_config``, ``models_help`` and the checkpoint error messages
(``checkpoint.describe_architecture``) read the registry: none of them names a family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Union

import torch

from ..errors import InputError

EncoderOutput = Union[torch.Tensor, tuple[torch.Tensor, ...]]


class ImageEncoder(Protocol):
    """An image encoder (an ``nn.Module``) as ``PromptableModel3D`` and layer-wise distillation use it."""

    img_size: int
    blocks: torch.nn.ModuleList  # the token blocks, one stream each in ``forward_blocks``

    def __call__(self, image: torch.Tensor) -> EncoderOutput:
        """(B, in_chans, S, S, S) -> the embedding (B, out_chans, g, g, g), g = S / patch_size, or a tuple
        (embedding, *skips) for encoders whose decoder takes skip maps (``ImageFeatures``)."""
        ...

    def forward_blocks(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """-> (the token stream after each block, (B, g, g, g, embed_dim) each; the embedding): what
        ``training/distill.py`` matches, student block to teacher block."""
        ...


# a state_dict's image-encoder entries (keys without the ``image_encoder.`` prefix) -> a phrase naming the family,
# e.g. "a FastSAM3D student encoder (2 attention-free blocks)", or None when the keys are not this family's
Recogniser = Callable[[Mapping[str, torch.Tensor]], Optional[str]]


@dataclass(frozen=True)
class ModelEntry:
    """One model family: what ``register_model`` records."""

    name: str  # what build_model, --model and model.yaml's ``model:`` take
    config: type  # its config dataclass (config.py); the fields are build_model's keyword arguments
    encoder: Callable[..., ImageEncoder]  # config -> image encoder
    description: str  # one line: the encoder and the checkpoints it takes (CLI help, ``models_help``)
    aliases: tuple[str, ...] = ()
    recognise: Optional[Recogniser] = None  # for "the checkpoint looks like ..." in load errors
    # the published weights may be the encoder alone, keys without a prefix (FastSAM3D's release)
    encoder_only_checkpoints: bool = False


_MODELS: dict[str, ModelEntry] = {}
_NAMES: dict[str, str] = {}  # lower-case name or alias -> name


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add a model family; its name and aliases must be new."""
    names = [entry.name, *entry.aliases]
    taken = [n for n in names if n.lower() in _NAMES]
    if taken:
        raise ValueError(f"model name(s) already registered: {', '.join(taken)}")
    _MODELS[entry.name] = entry
    _NAMES.update({n.lower(): entry.name for n in names})
    return entry


def registered_models() -> list[ModelEntry]:
    """Every family, in registration order."""
    return list(_MODELS.values())


def available_models() -> list[str]:
    return list(_MODELS)


def model_entry(name: str) -> ModelEntry:
    """The family called ``name`` (or one of its aliases, any case); an InputError listing them otherwise."""
    key = _NAMES.get(str(name).lower())
    if key is None:
        raise InputError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    return _MODELS[key]


def models_help() -> str:
    """One line per family, ``name: description (also: aliases)``: for CLI help and listings."""
    lines = []
    for entry in _MODELS.values():
        also = f" (also: {', '.join(entry.aliases)})" if entry.aliases else ""
        lines.append(f"{entry.name}: {entry.description}{also}")
    return "\n".join(lines)
