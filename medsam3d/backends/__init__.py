"""Backends: what runs the network for the Segmenter. ``torch`` (PyTorch, any model, CPU or CUDA) or
``onnxruntime`` (an exported ONNX bundle, CPU; the process never imports torch).

A backend speaks numpy at its boundary: a normalised (S, S, S) crop in, opaque cached features out; features and
one window's prompts in, the kept mask's low-res logits (L, L, L) and its predicted IoU out. Everything between
the scan and the window (``preprocess``) and every decision about windows (``segmenter``) is shared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ContextManager, Optional, Protocol

import numpy as np

from ..errors import InputError

BACKENDS = ("torch", "onnxruntime", "auto")  # auto: onnxruntime where it can run the model, else torch


class Backend(Protocol):
    name: str  # the model family, e.g. "medsam3d-tiny"
    kind: str  # "torch" | "onnxruntime"
    img_size: int  # side S of the model's crop
    low_res_size: int  # side L of the logits decode returns and a mask prompt takes
    is_trained: bool

    def multimask_for(self, lone_click: bool) -> bool:
        """Decode policy: answer with the best of the multimask outputs? (``lone_click``: one click, nothing else)"""
        ...

    def encode(self, image: np.ndarray) -> Any:
        """(S, S, S) float32 normalised crop -> features (cache them; pass them back to ``decode`` unchanged)."""
        ...

    def decode(self, features: Any, points: Optional[np.ndarray], labels: Optional[np.ndarray],
               box: Optional[np.ndarray], mask_input: Optional[np.ndarray], multimask: bool
               ) -> tuple[np.ndarray, float]:
        """points (N, 3) crop voxels, labels (N,) 1 / 0, box (6,) corners, mask_input (L, L, L) logits (each None
        when absent) -> the best-scored mask's logits (L, L, L) float32 and its predicted IoU."""
        ...

    def using_threads(self, threads: Optional[int]) -> ContextManager:
        """The backend's thread count while a Segmenter works (torch's is process-wide; ONNX Runtime's is fixed
        when its sessions are made)."""
        ...


def open_backend(kind: str, model: Any = "default", checkpoint: Optional[str | Path] = None, device: str = "cpu",
                 threads: Optional[int] = None, allow_random_weights: bool = False) -> tuple[Backend, Optional[str]]:
    """-> (backend, sha256 of its weights when known). ``model``: "default", a stored name, a registry name with a
    checkpoint, an exported ONNX bundle directory (onnxruntime), or an object (a ``PromptableModel3D`` or a
    test stand-in: wrapped for the torch backend; a ready backend: used as it is)."""
    if hasattr(model, "using_threads"):
        return model, None
    kind = choose_backend(kind, model, checkpoint, device)
    if kind == "onnxruntime":
        if not isinstance(model, (str, Path)):
            raise InputError("the onnxruntime backend takes a model name or an ONNX bundle directory")
        if checkpoint is not None:
            raise InputError("--checkpoint is a PyTorch file: export it first (medsam3d export onnx --model NAME "
                             "--checkpoint PATH -o DIR), then pass --model DIR with --backend onnxruntime")
        if device != "cpu":
            raise InputError(f"the onnxruntime backend runs on the CPU; drop --device {device} or use --backend torch")
        from .onnx_backend import OnnxBackend

        backend = OnnxBackend.open(model, threads)
        return backend, backend.weights_sha256
    from .torch_backend import TorchBackend, load_model

    built, sha = load_model(model, checkpoint, device, allow_random_weights)
    return TorchBackend(built, device), sha


def choose_backend(kind: str, model: Any, checkpoint: Optional[str | Path], device: str) -> str:
    """``kind`` as asked -> "torch" or "onnxruntime". ``auto`` takes onnxruntime where it can run the model
    (``device`` "cpu", or "auto" not yet resolved: the CPU path is preferred), else torch."""
    if kind not in BACKENDS:
        raise InputError(f"unknown backend {kind!r}; choose one of: {', '.join(BACKENDS)}")
    if kind != "auto":
        return kind
    can_run = device in ("cpu", "auto") and onnxruntime_can_run(model, checkpoint, "cpu")
    return "onnxruntime" if can_run else "torch"


def onnxruntime_can_run(model: Any, checkpoint: Optional[str | Path], device: str) -> bool:
    """Whether onnxruntime can run ``model``: it is installed, the device is the CPU, and the model is an ONNX
    bundle (the packaged default's, or a directory) rather than PyTorch weights."""
    import importlib.util

    if checkpoint is not None or device != "cpu" or not isinstance(model, (str, Path)):
        return False
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    from .onnx_backend import bundle_directory

    try:
        bundle_directory(model)
    except InputError:
        return False
    return True


def prompt_tokens(points: Optional[np.ndarray], labels: Optional[np.ndarray], box: Optional[np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One window's prompts -> the decoder's prompt tokens, coords (T, 3) float32 and labels (T,) int64: clicks
    (1 / 0), then the box's two corners (2, 3) or, with clicks and no box, a padding token (-1). The numpy twin of
    ``models.prompt_encoder.prompt_tokens``, for the backend that has no torch (tested equal)."""
    coords, token_labels = [np.zeros((0, 3), np.float32)], [np.zeros(0, np.int64)]
    if points is not None and len(points):
        coords.append(np.asarray(points, np.float32).reshape(-1, 3))
        token_labels.append(np.asarray(labels, np.int64).reshape(-1))
        if box is None:
            coords.append(np.zeros((1, 3), np.float32))
            token_labels.append(np.array([-1], np.int64))
    if box is not None:
        coords.append(np.asarray(box, np.float32).reshape(2, 3))
        token_labels.append(np.array([2, 3], np.int64))
    return np.concatenate(coords), np.concatenate(token_labels)
