"""Dataset folders on disk: the cases a folder holds, its label names, and which cases are held out.

Layouts: nnU-Net v2 (``dataset.json`` with ``file_ending``/``channel_names``/``labels``, ``imagesTr/CASE_0000``,
``labelsTr/CASE``) and the Medical Segmentation Decathlon (``dataset.json`` with a ``training`` list). Training
(``training.data``) and evaluation (``evaluation.evaluate``) both find their cases here. The project's fixed
held-out split is ``configs/data/public_split.json`` (``{"heldout": [case ids], ...}``).

Reads JSON and lists folders only: no image is opened here (training from packed data runs without SimpleITK).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .errors import InputError

SPLIT_FILE = Path(__file__).resolve().parents[1] / "configs" / "data" / "public_split.json"


@dataclass
class Case:
    case_id: str
    image: Path
    label: Optional[Path]
    modality: str  # "CT", "MR", ... (from the dataset's channel names)


def discover(root: str | Path) -> list[Case]:
    """Cases of an nnU-Net v2 or MSD dataset folder (label may be None when missing)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise InputError(f"{root} has no dataset.json (expected an nnU-Net v2 or Decathlon dataset folder)")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise InputError(f"{meta_path} is not valid JSON: {exc}") from None
    if "training" in meta and isinstance(meta["training"], list):  # Medical Segmentation Decathlon
        modality = str((meta.get("modality") or {}).get("0", "unknown"))
        cases = []
        for item in meta["training"]:
            image = root / item["image"]
            label = root / item["label"] if item.get("label") else None
            case_id = Path(item["image"]).name.split(".")[0]
            cases.append(Case(case_id, image, label if label and label.exists() else None, modality))
        return cases
    ending = meta.get("file_ending", ".nii.gz")
    channels = meta.get("channel_names") or meta.get("modality") or {"0": "unknown"}
    modality = str(channels.get("0", "unknown"))
    cases = []
    for image in sorted((root / "imagesTr").glob(f"*_0000{ending}")):
        case_id = image.name[: -len(f"_0000{ending}")]
        label = root / "labelsTr" / f"{case_id}{ending}"
        cases.append(Case(case_id, image, label if label.exists() else None, modality))
    if not cases:
        raise InputError(f"{root}/imagesTr holds no *_0000{ending} images")
    return cases


def label_names(root: str | Path) -> dict[int, str]:
    """Label value -> name from ``root``'s dataset.json (nnU-Net's ``{"name": value}``; empty without one)."""
    meta_path = Path(root) / "dataset.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return {int(v): k for k, v in (meta.get("labels") or {}).items() if str(v).isdigit() or isinstance(v, int)}


def heldout_cases(split: str | Path = SPLIT_FILE) -> set[str]:
    """The case ids a split file holds out."""
    return set(json.loads(Path(split).read_text())["heldout"])


def without_heldout(cases: Sequence[Case], heldout: Sequence[str]) -> list[Case]:
    """``cases`` less the held-out ones; a held-out id that names none of them is an error (a misspelt one would
    otherwise be trained on without a word)."""
    held = set(heldout)
    unknown = sorted(held - {c.case_id for c in cases})
    if unknown:
        raise InputError(f"held-out case(s) {', '.join(unknown)} not found in the data roots")
    return [c for c in cases if c.case_id not in held]
