"""Run configs: YAML files (``configs/``) over the defaults below, overridden by ``--set key.sub=value``.

``load_config`` -> a ``RunConfig``: typed sections (``model``, ``data``, ``train``, ``distill``) whose values are
checked and converted once, here (an unknown key, a word where a number goes, a choice that does not exist are
``InputError``s naming the key), so the training code reads ``cfg.train.grad_accum`` as the int it is.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from ..errors import InputError

Follow = Literal["best", "predicted"]
FOLLOW_CHOICES: tuple[str, ...] = get_args(Follow)  # what the next simulated click follows (InteractiveStep)


@dataclass
class ModelSpec:
    """A model to build: ``models.build_model(name, checkpoint=checkpoint, **config)``."""

    name: str = "medsam3d-tiny"
    config: dict[str, Any] = field(default_factory=dict)  # architecture fields (models/config.py), as given
    checkpoint: Optional[str] = None


@dataclass
class AnatomyOptions:
    """``data.anatomy``: the composed scenes (medsam3d.training.synth.SynthConfig)."""

    min_shapes: int = 3  # objects per scene: bank shapes (anatomy) or procedural objects (procedural)
    max_shapes: int = 10
    procedural_shapes: int = 3  # at most this many procedural objects added to an anatomy scene
    ct_prob: float = 0.5  # chance a scene is painted as CT (Hounsfield units), else MR
    elastic: float = 3.0  # spread of the smooth displacement field, voxels
    rotate_deg: float = 180.0  # a bank shape's rotation about each axis (>= 180: any orientation)
    # a bank shape's overall zoom range, then per-axis factors within 1 +- anisotropy
    scale: list[float] = field(default_factory=lambda: [0.7, 1.3])
    anisotropy: float = 0.2
    layout_prob: float = 0.3  # chance a scene starts from one case's shapes as they lie, deformed together
    contact_prob: float = 0.5  # chance a shape is placed against an earlier one
    behind_prob: float = 0.3  # chance a shape fills only free voxels (wraps around earlier ones) instead of over
    parcel_prob: float = 0.7  # chance of random background parcels inside the body
    thick_slice_prob: float = 0.4
    truncated_weight: float = 0.25  # sampling weight of shapes cut by their scan's edge
    bank: Optional[str] = None  # shape bank file (default: built once beside the preprocessed cache)


@dataclass
class PseudoOptions:
    """``data.pseudo``: medsam3d.training.pseudo.PseudoSettings, plus the unlabelled image folders."""

    roots: list[str] = field(default_factory=list)  # e.g. data/public/Unlabelled (fetch_public_data.sh)
    scales: list[int] = field(default_factory=lambda: [6, 10])  # supervoxel seed spacing, voxels
    # merge-cost levels of the hierarchy
    levels: list[float] = field(default_factory=lambda: [0.02, 0.03, 0.045, 0.065, 0.09, 0.12, 0.16])
    persist: int = 2  # levels a region must survive (nearly) unchanged
    grow: float = 0.1
    min_contrast: float = 1.4  # mean boundary gradient / mean inside gradient
    smooth: float = 1.0
    boundary: float = 0.5  # weight of the boundary gradient in the merge cost
    min_voxels: int = 300
    max_voxels: int = 700000
    max_body_share: float = 0.6
    min_fill: float = 0.05  # voxels / bounding-box voxels
    max_surface: float = 30.0  # boundary faces / voxels^(2/3)


@dataclass
class DataConfig:
    roots: list[str] = field(default_factory=list)  # nnU-Net v2 or Medical Segmentation Decathlon folders
    # instead of roots: a folder of cases already in model space (cases.json + .npz, scripts/burst.py pack),
    # which trains without reading a scan (and without SimpleITK)
    packed: Optional[str] = None
    labels: Optional[list[int]] = None  # subset of label values to train on (None: all)
    spacing: float = 1.5  # mm, isotropic model space
    min_voxels: int = 20  # structures smaller than this (in model space) are not targets
    synthetic_fraction: float = 0.0  # share of samples painted from label maps (SynthSeg-style)
    # share of samples composed from the shape bank (random shapes of every training label map, deformed and
    # painted as CT or MR: medsam3d.training.synth), and from procedural objects only; 0 and 0: never drawn
    anatomy_fraction: float = 0.0
    procedural_fraction: float = 0.0
    anatomy: AnatomyOptions = field(default_factory=AnatomyOptions)
    # share of samples whose target is a pseudo-mask of a training case (labelled or in pseudo.roots; never
    # a held-out one), with the real image: medsam3d.training.pseudo. 0: never drawn
    pseudo_fraction: float = 0.0
    pseudo: PseudoOptions = field(default_factory=PseudoOptions)
    size_weighting: float = 0.0  # >0: large structures sampled up to 4x as often, (voxels/median)**this
    # chance a crop is rotated and scaled (bodies differ in size and pose; a handful of subjects show few)
    affine_prob: float = 0.0
    rotate_deg: float = 10.0  # up to this much about each axis
    scale: float = 0.15  # zoom by a factor in [1 - scale, 1 + scale] per axis
    cache: Optional[str] = None  # preprocessed-data cache folder (default: <out>/cache)
    workers: int = 0  # DataLoader worker processes
    holdout: list[str] = field(default_factory=list)  # case ids never trained on


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 1
    grad_accum: int = 1  # micro-batches per optimiser step (the interactive loop)
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: int = 10
    clicks: int = 5  # simulated clicks per sample: the first inside the target, the rest on errors
    # clicks that carry the loss: the first and a random draw of the others; the rest are decoded without
    # gradients. None: every click
    loss_clicks: Optional[int] = None
    # the mask of a multimask decode that the next click follows: "best" (lowest loss) or "predicted" (the IoU
    # head's pick, what inference keeps)
    follow: Follow = "best"
    box_prob: float = 0.0  # chance a sample's first prompt is a 3D box (models that take boxes)
    central_click_prob: float = 0.0  # chance a simulated click is the protocol's deepest point, not a random voxel
    iou_rank_weight: float = 0.0  # >0: listwise ranking loss on the IoU head's multimask scores
    loss_downsample: int = 1  # >1: loss and simulated clicks on a coarser grid (much cheaper on CPU)
    reinit: list[str] = field(default_factory=list)  # submodules given fresh weights first (dotted names)
    freeze: list[str] = field(default_factory=list)  # parts kept fixed: image_encoder, prompt_encoder, mask_decoder
    only: list[str] = field(default_factory=list)  # if given, the submodules trained (dotted names); the rest fixed
    checkpoint_every: int = 50
    snapshot_every: int = 0  # >0: also keep the weights alone every this many steps (snapshots/, learning curves)
    max_minutes: float = 0.0  # >0: stop (checkpointed and exported) once this much wall-clock time has passed
    log_every: int = 10
    amp: Union[Literal["auto", "bf16", "off"], bool] = "auto"  # bf16 autocast on CUDA ("auto", "bf16", true)


@dataclass
class HolisticWeights:
    feature: float = 1.0
    output: float = 1.0
    truth: float = 1.0


@dataclass
class DistillConfig:
    teacher: ModelSpec = field(default_factory=lambda: ModelSpec(name="sam-med3d"))
    stage1_steps: int = 100
    schedule_every: int = 20  # steps between adding the next matched layer
    stage2_steps: int = 50  # decoder fine-tuning on masks (student frozen unless stage2_train_student)
    stage2_train_student: bool = False
    feature_cache: bool = True  # teacher features computed once, stored fp16
    mode: Literal["layerwise", "holistic"] = "layerwise"  # FastSAM3D, or ESAM: embedding + teacher masks + truth
    holistic_steps: int = 100
    holistic_weights: HolisticWeights = field(default_factory=HolisticWeights)


@dataclass
class RunConfig:
    seed: int = 0
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        """Nested mapping (as YAML holds it) -> typed config; values converted and checked, unknown keys errors."""
        return _typed(cls, values, "")

    def as_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists, no tuples): what config.yaml and checkpoints hold."""
        return dataclasses.asdict(self)


DEFAULTS: dict[str, Any] = RunConfig().as_dict()


def _typed(cls: type, values: Any, where: str):
    """Mapping -> dataclass ``cls``, each field converted to its annotated type (``_convert``)."""
    if not isinstance(values, dict):
        raise InputError(f"{where.rstrip('.') or 'the config'} must be a mapping, not {values!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [key for key in values if key not in names]
    if unknown:
        raise InputError(f"unknown config key {where + str(unknown[0])!r}")
    return cls(**{key: _convert(value, hints[key], where + key) for key, value in values.items()})


def _convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, Literal, Optional/Union, list[...], dict, a dataclass).

    Numbers are converted as the code reading them used to (YAML reads ``1e-4`` as a string: float() takes it);
    anything else that does not fit is an InputError naming the key."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return _typed(hint, value, where + ".")
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message
            return _convert(value, options[0], where)
        for option in options:
            try:
                return _convert(value, option, where)
            except InputError:
                pass
        raise InputError(f"{where} must be {_describe(hint)}, not {value!r}")
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise InputError(f"{where} must be {' or '.join(args)}, not {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where} must be a list, not {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{where} must be a mapping, not {value!r}")
        return dict(value)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint in (int, float) and isinstance(value, int) and not isinstance(value, bool):
        return hint(value)
    if hint in (int, float) and isinstance(value, (float, str)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is not None and hint is float:
            return number
        if number is not None and number.is_integer():
            return int(number)
    raise InputError(f"{where} must be {_describe(hint)}, not {value!r}")


def _describe(hint: Any) -> str:
    if get_origin(hint) is Union:
        return " or ".join(_describe(a) for a in get_args(hint) if a is not type(None))
    if get_origin(hint) is Literal:
        return " or ".join(map(str, get_args(hint)))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _merge(base: dict, update: dict, path: str = "") -> dict:
    """``update`` over ``base``, section by section; a model's ``config`` is replaced whole (any architecture key)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in out:
            raise InputError(f"unknown config key {where!r}")
        if isinstance(out[key], dict) and key != "config" and isinstance(value, dict):
            out[key] = _merge(out[key], value, where + ".")
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise InputError(f"--set takes key.sub=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def _override(cfg: dict, text: str) -> None:
    """Apply one ``key.sub=value`` to the nested dict ``cfg``; keys under a model's ``config`` may be new."""
    keys, value = parse_override(text)
    node = cfg
    for k in keys[:-1]:
        if k not in node or not isinstance(node[k], dict):
            raise InputError(f"unknown config key {'.'.join(keys)!r}")
        node = node[k]
    if keys[-1] not in node and keys[-2:-1] != ["config"]:
        raise InputError(f"unknown config key {'.'.join(keys)!r}")
    node[keys[-1]] = value


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a mapping")
    section = data.get("data") or {}
    # relative data paths are relative to the config file... unless they exist from here
    if section.get("roots"):
        section["roots"] = _relative_to(path, section["roots"])
    if isinstance(section.get("pseudo"), dict) and section["pseudo"].get("roots"):
        section["pseudo"]["roots"] = _relative_to(path, section["pseudo"]["roots"])
    return data


def _relative_to(config: Path, roots: list) -> list[str]:
    return [str(r if Path(r).exists() else config.parent / r) for r in roots]


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Defaults <- YAML file <- overrides. Unknown keys are errors (a typo must not silently do nothing)."""
    cfg = _merge(DEFAULTS, _read_yaml(Path(path)) if path is not None else {})
    for text in overrides:
        _override(cfg, text)
    return RunConfig.from_dict(cfg)
