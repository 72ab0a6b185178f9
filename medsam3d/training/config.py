"""Run configs: YAML files (``configs/``) with defaults, overridden by ``--set key.sub=value`` on the command line."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError

# what the next simulated click follows among a multimask decode's masks (InteractiveStep)
FOLLOW_CHOICES = ("best", "predicted")

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "model": {"name": "medsam3d-tiny", "config": {}, "checkpoint": None},
    "data": {
        "roots": [],  # nnU-Net v2 or Medical Segmentation Decathlon folders
        # instead of roots: a folder of cases already in model space (cases.json + .npz, scripts/burst.py pack),
        # which trains without reading a scan (and without SimpleITK)
        "packed": None,
        "labels": None,  # subset of label values to train on (None: all)
        "spacing": 1.5,  # mm, isotropic model space
        "min_voxels": 20,  # structures smaller than this (in model space) are not targets
        "synthetic_fraction": 0.0,  # share of samples painted from label maps (SynthSeg-style)
        # share of samples composed from the shape bank (random shapes of every training label map, deformed and
        # painted as CT or MR: medsam3d.training.synth), and from procedural objects only; 0 and 0: never drawn
        "anatomy_fraction": 0.0,
        "procedural_fraction": 0.0,
        "anatomy": {  # the composed scenes (medsam3d.training.synth.SynthConfig)
            "min_shapes": 3,  # objects per scene: bank shapes (anatomy) or procedural objects (procedural)
            "max_shapes": 10,
            "procedural_shapes": 3,  # at most this many procedural objects added to an anatomy scene
            "ct_prob": 0.5,  # chance a scene is painted as CT (Hounsfield units), else MR
            "elastic": 3.0,  # spread of the smooth displacement field, voxels
            "rotate_deg": 180.0,  # a bank shape's rotation about each axis (>= 180: any orientation)
            "scale": [0.7, 1.3],  # a bank shape's overall zoom, then per-axis factors within 1 +- anisotropy
            "anisotropy": 0.2,
            "layout_prob": 0.3,  # chance a scene starts from one case's shapes as they lie, deformed together
            "contact_prob": 0.5,  # chance a shape is placed against an earlier one
            "behind_prob": 0.3,  # chance a shape fills only free voxels (wraps around earlier ones) instead of over
            "parcel_prob": 0.7,  # chance of random background parcels inside the body
            "thick_slice_prob": 0.4,
            "truncated_weight": 0.25,  # sampling weight of shapes cut by their scan's edge
            "bank": None,  # shape bank file (default: built once beside the preprocessed cache)
        },
        # share of samples whose target is a pseudo-mask of a training case (labelled or in pseudo.roots; never
        # a held-out one), with the real image: medsam3d.training.pseudo. 0: never drawn
        "pseudo_fraction": 0.0,
        "pseudo": {  # medsam3d.training.pseudo.PseudoSettings, plus the unlabelled image folders
            "roots": [],  # e.g. data/public/Unlabelled (fetch_public_data.sh)
            "scales": [6, 10],  # supervoxel seed spacing, voxels
            "levels": [0.02, 0.03, 0.045, 0.065, 0.09, 0.12, 0.16],  # merge-cost levels of the hierarchy
            "persist": 2,  # levels a region must survive (nearly) unchanged
            "grow": 0.1,
            "min_contrast": 1.4,  # mean boundary gradient / mean inside gradient
            "smooth": 1.0,
            "boundary": 0.5,  # weight of the boundary gradient in the merge cost
            "min_voxels": 300,
            "max_voxels": 700000,
            "max_body_share": 0.6,
            "min_fill": 0.05,  # voxels / bounding-box voxels
            "max_surface": 30.0,  # boundary faces / voxels^(2/3)
        },
        "size_weighting": 0.0,  # >0: large structures sampled up to 4x as often, (voxels/median)**this
        # chance a crop is rotated and scaled (bodies differ in size and pose; a handful of subjects show few)
        "affine_prob": 0.0,
        "rotate_deg": 10.0,  # up to this much about each axis
        "scale": 0.15,  # zoom by a factor in [1 - scale, 1 + scale] per axis
        "cache": None,  # preprocessed-data cache folder (default: <out>/cache)
        "workers": 0,  # DataLoader worker processes
        "holdout": [],  # case ids never trained on
    },
    "train": {
        "steps": 100,
        "batch_size": 1,
        "grad_accum": 1,
        "lr": 1e-4,
        "weight_decay": 0.01,
        "warmup": 10,
        "clicks": 5,  # simulated clicks per sample: the first inside the target, the rest on errors
        # clicks that carry the loss: the first and a random draw of the others; the rest are decoded without
        # gradients. None: every click
        "loss_clicks": None,
        # the mask of a multimask decode that the next click follows: "best" (lowest loss) or "predicted" (the IoU
        # head's pick, what inference keeps)
        "follow": "best",
        "box_prob": 0.0,  # chance a sample's first prompt is a 3D box (models that take boxes)
        "central_click_prob": 0.0,  # chance a simulated click is the protocol's deepest point, not a random voxel
        "iou_rank_weight": 0.0,  # >0: listwise ranking loss on the IoU head's multimask scores (first click)
        "loss_downsample": 1,  # >1: loss and simulated clicks on a coarser grid (much cheaper on CPU)
        "reinit": [],  # submodules given fresh weights before training (dotted names; finetune repairs)
        "freeze": [],  # parts kept fixed: image_encoder, prompt_encoder, mask_decoder
        "only": [],  # if given, the submodules trained (dotted names); everything else is kept fixed
        "checkpoint_every": 50,
        "snapshot_every": 0,  # >0: also keep the weights alone every this many steps (snapshots/, learning curves)
        "max_minutes": 0,  # >0: stop (checkpointed and exported) once this much wall-clock time has passed
        "log_every": 10,
        "amp": "auto",  # bf16 autocast on CUDA; off on CPU
    },
    "distill": {
        "teacher": {"name": "sam-med3d", "config": {}, "checkpoint": None},
        "stage1_steps": 100,
        "schedule_every": 20,  # steps between adding the next matched layer
        "stage2_steps": 50,  # decoder fine-tuning on masks (student frozen unless stage2_train_student)
        "stage2_train_student": False,
        "feature_cache": True,  # teacher features computed once, stored fp16
        "mode": "layerwise",  # layerwise (FastSAM3D) or holistic (ESAM: embedding + teacher masks + truth)
        "holistic_steps": 100,
        "holistic_weights": {"feature": 1.0, "output": 1.0, "truth": 1.0},
    },
}


def _merge(base: dict, update: dict, path: str = "") -> dict:
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


def load_config(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    """Defaults <- YAML file <- overrides. Unknown keys are errors (a typo must not silently do nothing)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise InputError(f"{path} must hold a mapping")
        base_dir = path.parent
        roots = data.get("data", {}).get("roots")
        if roots:  # relative data paths are relative to the config file... unless they exist from here
            data["data"]["roots"] = [str(r if Path(r).exists() else base_dir / r) for r in roots]
    cfg = _merge(DEFAULTS, data)
    for text in overrides:
        keys, value = parse_override(text)
        node = cfg
        for k in keys[:-1]:
            if k not in node or not isinstance(node[k], dict):
                raise InputError(f"unknown config key {'.'.join(keys)!r}")
            node = node[k]
        if keys[-1] not in node and keys[-2:-1] != ["config"]:
            raise InputError(f"unknown config key {'.'.join(keys)!r}")
        node[keys[-1]] = value
    if cfg["train"]["follow"] not in FOLLOW_CHOICES:
        raise InputError(f"train.follow must be {' or '.join(FOLLOW_CHOICES)}, not {cfg['train']['follow']!r}")
    return cfg
