"""The shape bank: every labelled structure of the training label maps as a binary mask in model space.

Each shape is the structure's bounding-box crop of the preprocessed (RAS+, isotropic) label map, bit-packed, with
its source case, label value and name, tissue class, where the box sat in its case (to rebuild a case's layout),
whether it touches the case's edge (a cut face) and, for CT sources, its median HU. Built once per preprocessed
cache (``shapes_v2.npz`` beside the cases, a few MB). Held-out subjects never enter: the builder drops them and
loading refuses a bank that holds one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from scipy import ndimage

from ...datasets import SPLIT_FILE, discover, heldout_cases
from ...errors import InputError
from ...atomic import atomic_output
from .tissues import tissue_of

BANK_VERSION = 2


def split_heldout(path: Path = SPLIT_FILE) -> set[str]:
    """Case ids held out by the project's fixed split (empty when the file is not there, e.g. an installed wheel)."""
    return heldout_cases(path) if Path(path).is_file() else set()


def unpack_mask(bits: np.ndarray, offsets: np.ndarray, shapes: np.ndarray, i: int) -> np.ndarray:
    """Mask i of masks stored bit-packed one after another (``bits[offsets[i]:offsets[i + 1]]``) -> uint8 (0/1)
    array of shape ``shapes[i]``."""
    flat = np.unpackbits(bits[offsets[i]:offsets[i + 1]], count=int(np.prod(shapes[i])))
    return flat.reshape(tuple(shapes[i]))


@dataclass
class ShapeBank:
    bits: np.ndarray  # uint8: np.packbits of every mask (C order), concatenated
    offsets: np.ndarray  # (n + 1,) int64: shape i is bits[offsets[i]:offsets[i + 1]]
    shapes: np.ndarray  # (n, 3) int32: box size (x, y, z)
    origins: np.ndarray  # (n, 3) int32: box corner in its case (voxels)
    values: np.ndarray  # (n,) int32: label value in its case
    voxels: np.ndarray  # (n,) int64
    truncated: np.ndarray  # (n,) bool: touches the edge of its case's volume
    hu: np.ndarray  # (n,) float32: median HU in its CT case, nan for MR
    cases: list[str]
    names: list[str]
    tissues: list[str]
    spacing: float
    case_shapes: dict  # case id -> its model-space volume's shape (x, y, z)
    _masks: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.values)

    def mask(self, i: int) -> np.ndarray:
        """Shape i as a uint8 (0/1) array of its box size, unpacked once per process."""
        if i not in self._masks:
            self._masks[i] = unpack_mask(self.bits, self.offsets, self.shapes, i)
        return self._masks[i]

    def save(self, path: str | Path) -> None:
        meta = {"version": BANK_VERSION, "cases": self.cases, "names": self.names, "tissues": self.tissues,
                "spacing": self.spacing, "case_shapes": self.case_shapes}
        with atomic_output(Path(path), suffix=".npz") as tmp:
            np.savez_compressed(tmp, bits=self.bits, offsets=self.offsets, shapes=self.shapes, origins=self.origins,
                                values=self.values, voxels=self.voxels, truncated=self.truncated, hu=self.hu,
                                meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path, heldout: Iterable[str] = ()) -> "ShapeBank":
        """Read a bank; an InputError if it holds any held-out case (given, or in the project's split)."""
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {k: data[k] for k in ("bits", "offsets", "shapes", "origins", "values", "voxels", "truncated",
                                           "hu")}
        bad = sorted(set(meta["cases"]) & (set(heldout) | split_heldout()))
        if bad:
            raise InputError(f"shape bank {path} holds held-out case(s) {', '.join(bad)}; rebuild it")
        return cls(**arrays, cases=meta["cases"], names=meta["names"], tissues=meta["tissues"],
                   spacing=float(meta["spacing"]), case_shapes=meta["case_shapes"])


def _label_names(record: dict) -> dict[int, str]:
    """Label value -> name from the dataset.json beside the case's image folder (empty if none)."""
    meta = Path(record.get("source", "")).parent.parent / "dataset.json"
    if not meta.is_file():
        return {}
    labels = json.loads(meta.read_text()).get("labels", {})
    return {int(v): str(k) for k, v in labels.items() if not isinstance(v, list)}


def _pieces(mask: np.ndarray, min_voxels: int) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """One structure -> its parts: the whole mask, or each connected component when it is a set of separate
    pieces (one label for all ribs, a spine, ...)."""
    comp, n = ndimage.label(mask)
    if n >= 3:
        sizes = np.bincount(comp.ravel())[1:]
        if sizes.max() < 0.6 * sizes.sum():
            boxes = ndimage.find_objects(comp)
            return [(box, comp[box] == k + 1) for k, box in enumerate(boxes) if sizes[k] >= min_voxels]
    return [(tuple(slice(0, s) for s in mask.shape), mask)]


def build_bank(records: list[dict], folder: str | Path, heldout: Iterable[str] = (), min_voxels: int = 64,
               spacing: float = 1.5, log=print) -> ShapeBank:
    """Shapes of every structure of the preprocessed cases ``records`` in ``folder`` (data.preprocess), held-out
    cases (given, or in the project's split file) excluded."""
    held = set(heldout) | split_heldout()
    skipped = [r["case_id"] for r in records if r["case_id"] in held]
    if skipped:
        log(f"shape bank: held-out case(s) {', '.join(skipped)} excluded")
    packed, shapes, origins, values, voxels, truncated, hus = [], [], [], [], [], [], []
    cases, names, tissues, case_shapes = [], [], [], {}
    for rec in records:
        if rec["case_id"] in held:
            continue
        with np.load(Path(folder) / rec["file"]) as data:
            label = data["label"]
            image = data["image"] if str(rec.get("modality", "")).upper().startswith("CT") else None
        label_names = _label_names(rec)
        case_shapes[rec["case_id"]] = [int(n) for n in label.shape]
        for value, box in enumerate(ndimage.find_objects(label), start=1):
            if box is None:
                continue
            name = label_names.get(value, f"label_{value}")
            for sub, mask in _pieces(label[box] == value, min_voxels):
                n = int(mask.sum())
                if n < min_voxels:
                    continue
                lo = np.array([b.start + s.start for b, s in zip(box, sub)])
                hi = lo + mask.shape
                inner = tuple(slice(a, b) for a, b in zip(lo, hi))
                packed.append(np.packbits(mask.ravel()))
                shapes.append(mask.shape)
                origins.append(lo)
                values.append(value)
                voxels.append(n)
                truncated.append(bool((lo == 0).any() or (hi == label.shape).any()))
                hus.append(float(np.median(image[inner][mask])) if image is not None else np.nan)
                cases.append(rec["case_id"])
                names.append(name)
                tissues.append(tissue_of(name))
    if not packed:
        raise InputError("shape bank: no structure of at least min_voxels in the training label maps")
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in packed])]).astype(np.int64)
    return ShapeBank(np.concatenate(packed), offsets, np.array(shapes, dtype=np.int32),
                     np.array(origins, dtype=np.int32), np.array(values, dtype=np.int32),
                     np.array(voxels, dtype=np.int64), np.array(truncated, dtype=bool),
                     np.array(hus, dtype=np.float32), cases, names, tissues, float(spacing), case_shapes)


def bank_for(records: list[dict], folder: str | Path, heldout: Iterable[str] = (), spacing: float = 1.5,
             path: Optional[str | Path] = None, log=print) -> ShapeBank:
    """The bank of a preprocessed cache, built on first use and kept beside it (or at ``path``)."""
    path = Path(path) if path else Path(folder) / f"shapes_v{BANK_VERSION}.npz"
    if path.is_file():
        return ShapeBank.load(path, heldout)
    bank = build_bank(records, folder, heldout, spacing=spacing, log=log)
    bank.save(path)
    log(f"shape bank: {len(bank)} shapes from {len(set(bank.cases))} case(s) -> {path}")
    return bank


def bank_from_roots(roots: Iterable[str | Path], cache: str | Path, spacing: float = 1.5, log=print) -> ShapeBank:
    """The bank of nnU-Net / Decathlon dataset folders: preprocess them (cached, held-out cases of the split
    left out) and build or load the bank beside the cache (for scripts; training uses ``bank_for``)."""
    from ..data import preprocess

    roots = [Path(r) for r in roots]
    present = {c.case_id for r in roots for c in discover(r)}
    heldout = sorted(split_heldout() & present)
    folder, records = preprocess(roots, cache, spacing, heldout, log=log)
    return bank_for(records, folder, heldout, spacing, log=log)
