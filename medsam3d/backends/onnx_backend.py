"""The ONNX Runtime backend: an exported bundle (``medsam3d export onnx``) run on the CPU without torch.

A bundle is a directory: ``encoder.onnx`` (image -> embedding, skip0..), ``decoder.onnx`` (features + prompt
tokens + mask prompt -> the kept mask's low-res logits and IoU) and ``model.json`` (sizes, decode policy, the
source weights' sha256). The packaged default ships one (``medsam3d/weights/default_onnx``).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from . import prompt_tokens

PACKAGED_BUNDLE = Path(__file__).resolve().parents[1] / "weights" / "default_onnx"
EXTRA_HINT = "the onnxruntime backend needs the onnx extra: pip install 'medsam3d[onnx]'"


def bundle_directory(model: str | Path) -> Path:
    """"default" or a bundle directory -> the directory holding model.json; an InputError otherwise."""
    if str(model) == "default":
        path = PACKAGED_BUNDLE
    else:
        path = Path(model).expanduser()
    if (path / "model.json").is_file():
        return path
    if str(model) == "default":
        raise InputError(f"the packaged ONNX bundle is missing ({path}); reinstall medsam3d")
    raise InputError(f"{model} is not an ONNX bundle (a directory with model.json); make one with "
                     f"medsam3d export onnx --model {model} -o DIR, then pass --model DIR")


class OnnxBackend:
    kind = "onnxruntime"
    is_trained = True  # export refuses random weights

    def __init__(self, directory: Path, threads: Optional[int] = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise InputError(EXTRA_HINT) from None
        self.directory = Path(directory)
        meta = json.loads((self.directory / "model.json").read_text())
        if meta.get("format") != "medsam3d-onnx" or int(meta.get("format_version", 0)) != 1:
            raise InputError(f"{self.directory / 'model.json'} is not a medsam3d ONNX bundle (format version 1)")
        self.meta = meta
        self.name = meta["model"]
        self.img_size = int(meta["img_size"])
        self.low_res_size = int(meta["low_res_size"])
        self.weights_sha256 = meta.get("weights_sha256")
        self.threads = int(threads) if threads else None
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or 0  # 0: ONNX Runtime's default (one per core)
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(self.directory / "encoder.onnx"), options, providers=providers)
        self.decoder = ort.InferenceSession(str(self.directory / "decoder.onnx"), options, providers=providers)
        self._feature_names = [o.name for o in self.encoder.get_outputs()]  # embedding, skip0, ...

    @classmethod
    def open(cls, model: str | Path, threads: Optional[int] = None) -> "OnnxBackend":
        return cls(bundle_directory(model), threads)

    def multimask_for(self, lone_click: bool) -> bool:
        return bool(self.meta["multimask_refine"] or (lone_click and self.meta["first_click_multimask"]))

    def using_threads(self, threads: Optional[int]):
        return nullcontext()  # fixed when the sessions were made

    def encode(self, image: np.ndarray) -> dict[str, np.ndarray]:
        crop = np.ascontiguousarray(image, np.float32)[None, None]  # (1, 1, S, S, S)
        return dict(zip(self._feature_names, self.encoder.run(None, {"image": crop})))

    def decode(self, features: dict[str, np.ndarray], points: Optional[np.ndarray], labels: Optional[np.ndarray],
               box: Optional[np.ndarray], mask_input: Optional[np.ndarray], multimask: bool
               ) -> tuple[np.ndarray, float]:
        if box is not None and not self.meta["box_prompts"]:  # the graph would take the tokens, untrained
            raise InputError(f"{self.name} takes no box prompts (its checkpoints have no box embeddings)")
        coords, token_labels = prompt_tokens(points, labels, box)  # (T, 3), (T,)
        if len(coords) < int(self.meta.get("min_tokens", 0)):
            raise InputError("the onnxruntime backend needs a click or a box with a mask prompt; "
                             "add one, or use --backend torch")
        size = self.low_res_size
        inputs = dict(features)
        inputs.update(
            coords=coords[None], labels=token_labels[None],  # (1, T, 3), (1, T)
            mask_input=(np.zeros((1, 1, size, size, size), np.float32) if mask_input is None
                        else np.ascontiguousarray(mask_input, np.float32)[None, None]),
            has_mask=np.array([mask_input is not None]), multimask=np.array([bool(multimask)]))
        low_res, iou = self.decoder.run(["low_res_logits", "iou"], inputs)  # (1, 1, L, L, L), (1, 1)
        return low_res[0, 0], float(iou[0, 0])
