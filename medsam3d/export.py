"""``PromptableModel3D`` -> an ONNX bundle for ONNX Runtime (the folder ``backends/onnx_backend.py`` reads).

A bundle is a folder of three files:

* ``encoder.onnx``: ``image`` (1, 1, S, S, S) -> ``embedding`` (1, C, g, g, g), then ``skip0`` .. ``skip{K-1}``
  (what ``encode`` returns: K = 0 without a conv stem, 3 for medsam3d-tiny with ``fine_output``);
* ``decoder.onnx``: ``embedding``, ``skip*``, ``coords`` (1, T, 3) float, ``labels`` (1, T) int64, ``mask_input``
  (1, 1, L, L, L), ``has_mask`` (1,) bool, ``multimask`` (1,) bool -> ``low_res_logits`` (1, 1, L, L, L) and ``iou``
  (1, 1): ``decode_tensors(..., keep_best=True)``. T, the number of prompt tokens (``prompt_tokens``), is dynamic;
* ``model.json``: sizes, the model's decode policy, where the weights came from, and how far the graphs' answers
  were from PyTorch's on a fixed crop and a set of prompts (``check``).

``export_onnx`` writes into a temporary folder beside the target, checks the graphs there, and renames the folder into
place only when they pass, so no reader ever sees a half bundle or an unchecked one.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from . import __version__
from .atomic import _umask
from .errors import InputError
from .models.prompt_encoder import prompt_tokens
from .models.promptable import PromptableModel3D

FORMAT = "medsam3d-onnx"
FORMAT_VERSION = 1
OPSET = 18
PROMPT_INPUTS = ["coords", "labels", "mask_input", "has_mask", "multimask"]
OUTPUTS = ["low_res_logits", "iou"]
# int8: weights of these ops per tensor, activations quantized on the fly (onnxruntime's quantize_dynamic). Conv too
# was slower on CPU (ConvInteger has no fast 3D kernel: the default's encoder 2.3x slower) and moved logits 3x more;
# per-channel weights broke the fine head's logits.
INT8_OPS = ["MatMul", "Gemm"]
EXTRA_HINT = "exporting to ONNX needs the onnx extra: pip install 'medsam3d[onnx]'"


class _Encoder(nn.Module):
    def __init__(self, model: PromptableModel3D) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:  # (1, 1, S, S, S) -> embedding, *skips
        # the image encoder itself: encode's input checks branch on values, which a graph cannot hold
        out = self.model.image_encoder(image)
        return (out,) if isinstance(out, torch.Tensor) else tuple(out)


class _Decoder(nn.Module):
    def __init__(self, model: PromptableModel3D) -> None:
        super().__init__()
        self.model = model

    def forward(self, embedding: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rest: skip0 .. skip{K-1}, coords (1, T, 3), labels (1, T), mask_input (1, 1, L, L, L), has_mask (1,),
        multimask (1,) -> logits (1, 1, L, L, L), iou (1, 1)."""
        *skips, coords, labels, mask_input, has_mask, multimask = rest
        return self.model.decode_tensors(embedding, tuple(skips), coords, labels, mask_input, has_mask, multimask,
                                         keep_best=True)


# ---------------------------------------------------------------------------------------------- the bundle
def export_onnx(model: PromptableModel3D, out_dir: str | os.PathLike, quantize: Optional[str] = None,
                tolerance: float = 1e-3, weights_sha256: Optional[str] = None) -> dict:
    """Export ``model`` to the bundle folder ``out_dir``, check it against PyTorch, return its model.json.

    ``out_dir`` is replaced if it holds a bundle already; any other non-empty path is refused. With
    ``quantize="int8"`` the fp32 graphs are held to ``tolerance`` first, then quantized; the int8 graphs'
    differences are measured and recorded, not held to ``tolerance`` (quantization moves logits by more)."""
    _onnxruntime()
    if quantize not in (None, "int8"):
        raise InputError(f"unknown quantization {quantize!r}; the one there is: int8")
    out = Path(out_dir).expanduser()
    if not out.parent.is_dir():
        raise InputError(f"output folder does not exist: {out.parent}")
    if out.exists() and not (out / "model.json").is_file() and not (out.is_dir() and not any(out.iterdir())):
        raise InputError(f"{out} exists and is not an ONNX bundle; refusing to overwrite it")
    model = copy.deepcopy(model).float().cpu().eval()  # the caller's model keeps its device and mode
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with torch.no_grad():
            features = model.encode(example_image(model))
            exporter = _export_graphs(model, features, tmp)
            check = check_bundle(model, tmp, tolerance)
            if quantize == "int8":
                _quantize_int8(tmp)
                check = check_bundle(model, tmp, None, min_tokens=check["min_tokens"])
        cfg = model.config
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "model": model.name,
            "img_size": int(cfg.img_size), "low_res_size": int(model.low_res_size), "skips": len(features.skips),
            "box_prompts": bool(cfg.box_prompts), "multimask_refine": bool(cfg.multimask_refine),
            "first_click_multimask": bool(cfg.first_click_multimask),
            "quantize": quantize, "weights_sha256": weights_sha256,
            "medsam3d_version": __version__, "torch_version": torch.__version__, "opset": OPSET,
            "exporter": exporter,
            "check": {k: v for k, v in check.items() if k != "min_tokens"},
            "min_tokens": check["min_tokens"],
        }
        (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only; give it a plain mkdir's mode
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def example_image(model: PromptableModel3D) -> torch.Tensor:
    """The fixed check crop (1, 1, S, S, S): a bright ball in the centre on noise, z-scored like a real crop."""
    size = model.config.img_size
    gen = torch.Generator().manual_seed(0)
    axis = torch.arange(size, dtype=torch.float32) - size / 2
    r2 = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2
    image = (r2 < (size / 5) ** 2).float() * 2.0 + 0.5 * torch.randn(size, size, size, generator=gen)
    return ((image - image.mean()) / image.std())[None, None]


def _replace_dir(new: Path, out: Path) -> None:
    """Rename the folder ``new`` to ``out``, replacing the bundle (or empty folder) there."""
    if not out.exists():
        os.rename(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.rename(out, old / "bundle")
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old / "bundle", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- graphs
def _export_graphs(model: PromptableModel3D, features, folder: Path) -> str:
    """Write encoder.onnx and decoder.onnx -> the exporter used ("dynamo" or "torchscript")."""
    skips = [f"skip{i}" for i in range(len(features.skips))]
    used = _export(_Encoder(model), (example_image(model),), folder / "encoder.onnx", ["image"],
                   ["embedding", *skips], dynamic=False)
    size = model.config.img_size
    # three tokens (a click, a negative click, the padding token) so T is not specialised to 0 or 1
    coords = torch.tensor([[[size / 2] * 3, [size / 4] * 3, [0.0] * 3]])  # (1, 3, 3)
    labels = torch.tensor([[1, 0, -1]])  # (1, 3)
    mask_input = torch.zeros(1, 1, *(model.low_res_size,) * 3)
    args = (features.embedding, *features.skips, coords, labels, mask_input, torch.tensor([False]),
            torch.tensor([True]))
    _export(_Decoder(model), args, folder / "decoder.onnx", ["embedding", *skips, *PROMPT_INPUTS], OUTPUTS,
            dynamic=True, exporter=used)
    return used


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: bool,
            exporter: Optional[str] = None) -> str:
    """Export one graph (``dynamic``: coords' and labels' axis 1 is T) -> the exporter used. The dynamo
    (torch.export) exporter first; the TorchScript exporter if it fails, or if ``exporter`` says so."""
    if exporter in (None, "dynamo"):
        try:
            tokens = torch.export.Dim("T", min=0, max=4096)
            shapes = (None, tuple({1: tokens} if n in ("coords", "labels") else None for n in inputs[1:]))
            with _quiet():
                torch.onnx.export(module, args, str(path), dynamo=True, external_data=False, opset_version=OPSET,
                                  input_names=inputs, output_names=outputs, dynamic_shapes=shapes if dynamic else None)
            return "dynamo"
        except Exception as exc:  # noqa: BLE001 - any failure of the new exporter: try the old one
            if exporter == "dynamo":
                raise
            warnings.warn(f"the dynamo ONNX exporter failed ({type(exc).__name__}: {str(exc)[:200]}); "
                          "using the TorchScript exporter")
    axes = {"coords": {1: "T"}, "labels": {1: "T"}} if dynamic else None
    with _quiet():
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes)
    return "torchscript"


@contextlib.contextmanager
def _quiet():
    """The exporters and the quantizer print progress and warn (through torch.onnx's logger, the root logger, and
    warnings) about things that do not concern a bundle's user (torchvision's ops, preprocessing advice)."""
    loggers = [logging.getLogger("torch.onnx"), logging.getLogger()]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _quantize_int8(folder: Path) -> None:
    """Both graphs, in place -> int8 weights for INT8_OPS."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in ("encoder.onnx", "decoder.onnx"):
        fp32 = folder / f"{name}.fp32"
        os.rename(folder / name, fp32)
        with _quiet():
            quantize_dynamic(fp32, folder / name, op_types_to_quantize=INT8_OPS, weight_type=QuantType.QInt8)
        fp32.unlink()


# ---------------------------------------------------------------------------------------------- the check
def check_prompts(model: PromptableModel3D, mask: torch.Tensor) -> list[tuple[str, dict]]:
    """The prompt sets a bundle is checked on -> (name, ``decode`` keywords); ``mask`` (1, 1, L, L, L) a previous
    prediction's logits for the mask prompts. Each is decoded with multimask on and off."""
    size = model.config.img_size
    c, d = size // 2, size // 8
    click = dict(points=torch.tensor([[[c, c, c]]], dtype=torch.float32), labels=torch.tensor([[1]]))
    gen = torch.Generator().manual_seed(1)
    sets = [
        ("one click", click),
        ("click + negative", dict(points=torch.tensor([[[c, c, c], [c + d, c - d, c]]], dtype=torch.float32),
                                  labels=torch.tensor([[1, 0]]))),
        ("15 clicks", dict(points=torch.randint(0, size, (1, 15, 3), generator=gen).float(),
                           labels=torch.tensor([[1, 0, 1] * 5]))),  # 16 tokens with the padding token
        ("click + mask", dict(**click, mask_input=mask)),
        ("mask alone", dict(mask_input=mask)),  # no tokens at all (T = 0)
    ]
    if model.config.box_prompts:
        box = torch.tensor([[c - d, c - d, c - d, c + d, c + d, c + d]], dtype=torch.float32)
        sets.insert(2, ("click + box", dict(**click, boxes=box)))
        sets.insert(3, ("box", dict(boxes=box)))
    return sets


def check_bundle(model: PromptableModel3D, folder: str | os.PathLike, tolerance: Optional[float] = 1e-3,
                 min_tokens: Optional[int] = None) -> dict:
    """Run the bundle in ONNX Runtime and ``model`` in PyTorch on ``example_image`` and ``check_prompts`` ->
    the max abs differences of the encoder's outputs, the kept logits and IoU, the lowest Dice between the two
    masks (logits > 0), and ``min_tokens``: 0 when a mask prompt alone (T = 0) runs right, else 1.

    The decoder graph gets the encoder graph's outputs, so the logits' difference is the whole path's. Past
    ``tolerance`` (None: measure only) an InputError names the graph, the prompts and the difference."""
    from .evaluation.metrics import dice  # imported here: MONAI's import costs ~2 s that export's others need not pay

    ort = _onnxruntime()  # model: float32, on the CPU, in eval mode (export_onnx passes such a copy)
    folder = Path(folder)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    encoder, decoder = (ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])
                        for name in ("encoder.onnx", "decoder.onnx"))
    image = example_image(model)
    with torch.no_grad():
        features = model.encode(image)
    names = [o.name for o in encoder.get_outputs()]
    got = encoder.run(None, {"image": image.numpy()})
    want = [features.embedding, *features.skips]
    if len(got) != len(want):
        raise InputError(f"encoder.onnx gives {len(got)} outputs, {model.name} {len(want)}")
    emb_diff = max(_diff(g, w) for g, w in zip(got, want))
    _within(tolerance, emb_diff, "encoder.onnx: the image features")
    with torch.no_grad():
        mask, _ = model.decode(features, **check_prompts(model, None)[0][1], keep_best=True)  # (1, 1, L, L, L)
    worst = {"logits": (0.0, ""), "iou": (0.0, "")}
    dice_min, tokens_ok = 1.0, True
    for name, prompts in check_prompts(model, mask):
        coords, labels = prompt_tokens(prompts.get("points"), prompts.get("labels"), prompts.get("boxes"), 1)
        if coords.shape[1] == 0 and min_tokens:
            continue
        for multimask in (False, True):
            with torch.no_grad():
                logits, iou = model.decode(features, **prompts, multimask_output=multimask, keep_best=True)
            feeds = dict(zip(names, got), coords=coords.numpy(), labels=labels.numpy(),
                         mask_input=(prompts.get("mask_input", torch.zeros_like(mask))).numpy(),
                         has_mask=np.array([prompts.get("mask_input") is not None]), multimask=np.array([multimask]))
            onnx_logits, onnx_iou = decoder.run(OUTPUTS, feeds)
            diffs = {"logits": _diff(onnx_logits, logits), "iou": _diff(onnx_iou, iou)}
            if coords.shape[1] == 0 and min_tokens is None and not all(
                    d <= (np.inf if tolerance is None else tolerance) for d in diffs.values()):
                tokens_ok = False  # the exporter got T = 0 wrong: the bundle needs a token
                continue
            label = f"{name}, multimask {'on' if multimask else 'off'}"
            worst.update({k: (d, label) for k, d in diffs.items() if not d <= worst[k][0]})
            dice_min = min(dice_min, dice(onnx_logits > 0, logits.numpy() > 0))
    for key, (diff, label) in worst.items():
        _within(tolerance, diff, f"decoder.onnx: the {key} for '{label}'")
    return {"embedding_max_abs_diff": emb_diff, "logits_max_abs_diff": worst["logits"][0],
            "iou_max_abs_diff": worst["iou"][0], "mask_dice_min": dice_min,
            "min_tokens": min_tokens if min_tokens is not None else 0 if tokens_ok else 1}


def _diff(a, b) -> float:
    """Max abs difference; inf when either holds a NaN (a NaN would compare as a pass)."""
    a, b = np.asarray(a, np.float64), np.asarray(torch.as_tensor(b).numpy(), np.float64)
    if a.shape != b.shape:
        raise InputError(f"an ONNX output has shape {a.shape}, PyTorch's {b.shape}")
    return float(np.abs(a - b).max()) if np.isfinite(a).all() and np.isfinite(b).all() else float("inf")


def _within(tolerance: Optional[float], diff: float, what: str) -> None:
    """Raise when ``diff`` is past ``tolerance``, or not finite (NaN or inf in an output) even without one."""
    if not np.isfinite(diff) or (tolerance is not None and diff > tolerance):
        limit = "" if tolerance is None else f", past the tolerance {tolerance:g}"
        raise InputError(f"{what} differ from PyTorch's by {diff:.3g}{limit}")


def _onnxruntime():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise InputError(EXTRA_HINT) from None
    return onnxruntime
