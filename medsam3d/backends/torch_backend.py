"""The PyTorch backend: a ``PromptableModel3D`` (or a stand-in with its ``encode``/``decode``) behind numpy."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import InputError


def load_model(model: Any, checkpoint: Optional[str | Path], device: str,
               allow_random_weights: bool = False) -> tuple[Any, Optional[str]]:
    """Name / store name / YAML + checkpoint -> (model on ``device``, sha256 of its weights when known).

    Refuses a model with random weights unless ``allow_random_weights`` (plumbing tests only)."""
    if not isinstance(model, (str, Path)):
        return model, None
    from .. import store
    from ..models import build_model

    model = str(model)
    decoder, config, sha = None, {}, None
    stored = None
    if model == "default":
        stored = store.default_model()
    elif checkpoint is None:
        stored = store.resolve(model)
    if stored is not None:
        model, checkpoint, decoder, config, sha = (stored.model, stored.checkpoint, stored.decoder_checkpoint,
                                                    stored.config, stored.sha256)
    built = build_model(model, checkpoint=checkpoint, decoder_checkpoint=decoder, device=device, **config)
    if not built.is_trained and not allow_random_weights:
        missing = ", ".join(p for p, s in built.weight_sources.items() if s == "random")
        raise InputError(f"model {built.name} has no trained weights for its {missing}; pass --checkpoint PATH "
                         "or a stored model name (a random-weight model would not be a segmentation)")
    if sha is None and checkpoint is not None and Path(checkpoint).is_file():
        sha = store.sha256_of(Path(checkpoint))
    return built, sha


class TorchBackend:
    kind = "torch"

    def __init__(self, model: Any, device: str = "cpu") -> None:
        self.model = model  # PromptableModel3D, or a stand-in with config.img_size, encode, decode, multimask_for
        self.device = torch.device(device)
        self.name = getattr(model, "name", type(model).__name__)
        self.img_size = int(model.config.img_size)
        self.low_res_size = int(getattr(model, "low_res_size", self.img_size // 4))
        self.is_trained = bool(getattr(model, "is_trained", True))

    def multimask_for(self, lone_click: bool) -> bool:
        return self.model.multimask_for(lone_click)

    @contextmanager
    def using_threads(self, threads: Optional[int]):
        if not threads:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def encode(self, image: np.ndarray) -> Any:
        with torch.inference_mode():
            return self.model.encode(torch.from_numpy(image)[None, None].to(self.device))  # (1, 1, S, S, S)

    def decode(self, features: Any, points: Optional[np.ndarray], labels: Optional[np.ndarray],
               box: Optional[np.ndarray], mask_input: Optional[np.ndarray], multimask: bool
               ) -> tuple[np.ndarray, float]:
        prompts = {}
        if points is not None and len(points):
            prompts["points"] = torch.tensor(np.asarray(points), dtype=torch.float32, device=self.device)[None]
            prompts["labels"] = torch.tensor(np.asarray(labels), dtype=torch.long, device=self.device)[None]
        if box is not None:
            prompts["boxes"] = torch.tensor(np.asarray(box), dtype=torch.float32, device=self.device)[None]
        if mask_input is not None:
            prompts["mask_input"] = torch.from_numpy(np.ascontiguousarray(mask_input, np.float32))[None, None].to(
                self.device)
        with torch.inference_mode():
            low_res, iou = self.model.decode(features, multimask_output=multimask, keep_best=True,
                                             **prompts)  # (1, M, L, L, L), (1, M); M = 1 for PromptableModel3D
        best = int(iou[0].argmax())  # a stand-in may return every mask: the highest score is kept either way
        return low_res[0, best].float().cpu().numpy(), float(iou[0, best])
