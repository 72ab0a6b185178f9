"""Cohorts on disk -> preprocessed cases in model space, cached, -> per-structure training targets.

The cases come from ``medsam3d.datasets`` (nnU-Net v2 and Decathlon folders, the held-out split).

Preprocessing, done once per case and cached under a fingerprint of the files and the settings: reorient to
RAS+ and resample to isotropic ``spacing`` (linear for the image, nearest for the labels), as the SAM-Med3D family
was trained. Unusable pairs (label missing, geometry different from the image, not 3D, empty label map) are
skipped with one warning that lists them; no usable case at all is an ``InputError``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from ..atomic import atomic_output, write_text_atomic
from ..datasets import Case, discover, without_heldout
from ..errors import InputError

if TYPE_CHECKING:
    import SimpleITK as sitk

CACHE_VERSION = 1  # bump when preprocessing changes: old caches are then ignored


@dataclass
class Structure:
    """One training target: label ``value`` of case ``case`` (index into the preprocessed cases)."""

    case: int
    value: int
    voxels: int
    center: tuple[int, int, int]  # voxel index in model space
    bbox: tuple[tuple[int, int, int], tuple[int, int, int]]


def fingerprint(cases: Sequence[Case], settings: dict) -> str:
    """Changes when any file (size, mtime) or any preprocessing setting changes."""
    digest = hashlib.sha256(json.dumps({"v": CACHE_VERSION, "settings": settings}, sort_keys=True).encode())
    for case in cases:
        for path in (case.image, case.label):
            if path is not None and path.exists():
                st = path.stat()
                digest.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


# SimpleITK is imported where scans are read, not at the top: a job that trains from an already preprocessed (or
# packed) cache runs without it (scripts/burst.py on a GPU machine that has no SimpleITK)
def _same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-4, atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-2)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))


def to_model_space(image: sitk.Image, spacing: float, interpolator: int, fill: float, pixel: int) -> np.ndarray:
    """Resample onto an RAS+ isotropic grid covering the image -> array [x, y, z] in model axis order."""
    import SimpleITK as sitk

    from ..io import ijk_from_sitk_array
    from ..preprocess import RAS_DIRECTION_IN_LPS

    size = np.array(image.GetSize())
    corners = np.array([[a, b, c] for a in (0, size[0] - 1) for b in (0, size[1] - 1) for c in (0, size[2] - 1)])
    lps = np.array([image.TransformContinuousIndexToPhysicalPoint([float(x) for x in c]) for c in corners])
    ras_axes = lps @ RAS_DIRECTION_IN_LPS  # coordinates along the R, A, S axes
    lo, hi = ras_axes.min(0), ras_axes.max(0)
    out_size = np.maximum(np.ceil((hi - lo) / spacing).astype(int) + 1, 1)
    ref = sitk.Image([int(s) for s in out_size], pixel)
    ref.SetSpacing([spacing] * 3)
    ref.SetOrigin(tuple(float(v) for v in RAS_DIRECTION_IN_LPS @ lo))
    ref.SetDirection(tuple(RAS_DIRECTION_IN_LPS.reshape(-1)))
    out = sitk.Resample(image, ref, sitk.Transform(), interpolator, fill, pixel)
    return np.ascontiguousarray(ijk_from_sitk_array(sitk.GetArrayFromImage(out)))


def _check_pair(case: Case) -> tuple[Optional[str], Optional[sitk.Image], Optional[sitk.Image]]:
    """-> (reason to skip or None, image, label)."""
    import SimpleITK as sitk

    if case.label is None:
        return "missing label", None, None
    try:
        image = sitk.ReadImage(str(case.image))
        label = sitk.ReadImage(str(case.label))
    except RuntimeError:
        return "unreadable file", None, None
    if image.GetDimension() != 3 or label.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        return "not a 3D scalar image", None, None
    if not _same_geometry(image, label):
        return "image and label geometry differ", None, None
    if not sitk.GetArrayViewFromImage(label).any():
        return "empty label map", None, None
    return None, image, label


def preprocess(roots: Sequence[str | Path], cache: str | Path, spacing: float = 1.5,
               holdout: Sequence[str] = (), log=print) -> tuple[Path, list[dict]]:
    """Preprocess every usable case of ``roots`` into ``cache`` (once); -> (cache folder, case records)."""
    cases = without_heldout([c for root in roots for c in discover(root)], holdout)
    if not cases:
        raise InputError("no cases found in the data roots")
    settings = {"spacing": spacing}
    folder = Path(cache) / fingerprint(cases, settings)
    index = folder / "cases.json"
    if index.is_file():
        return folder, json.loads(index.read_text())
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    records, skipped = [], []
    for case in cases:
        reason, image, label = _check_pair(case)
        if reason:
            skipped.append(f"{case.case_id} ({reason})")
            continue
        fill = float(sitk.GetArrayViewFromImage(image).min())
        img = to_model_space(sitk.Cast(image, sitk.sitkFloat32), spacing, sitk.sitkLinear, fill, sitk.sitkFloat32)
        lab = to_model_space(sitk.Cast(label, sitk.sitkUInt16), spacing, sitk.sitkNearestNeighbor, 0,
                             sitk.sitkUInt16)
        path = folder / f"{case.case_id}.npz"
        _save_npz_atomic(path, image=img.astype(np.float32), label=lab)
        records.append({"case_id": case.case_id, "file": path.name, "modality": case.modality,
                        "shape": list(img.shape), "source": str(case.image)})
    if skipped:
        warnings.warn(f"skipped {len(skipped)} case(s): {', '.join(skipped)}", stacklevel=2)
        log(f"skipped {len(skipped)} case(s): {', '.join(skipped)}")
    if not records:
        raise InputError(f"no usable image/label pair in {', '.join(map(str, roots))}: {', '.join(skipped)}")
    write_text_atomic(index, json.dumps(records, indent=1))
    return folder, records


def packed_cases(folder: str | Path, holdout: Sequence[str] = ()) -> tuple[Path, list[dict]]:
    """A packed folder (``cases.json`` + one .npz per case, model space) -> (folder, case records)."""
    folder = Path(folder)
    index = folder / "cases.json"
    if not index.is_file():
        raise InputError(f"data.packed: {folder} holds no cases.json (write one with: python scripts/burst.py pack)")
    records = json.loads(index.read_text())
    leaked = sorted({r["case_id"] for r in records} & set(holdout))
    if leaked:
        raise InputError(f"data.packed: {folder} holds held-out case(s) {', '.join(leaked)}")
    return folder, records


def structures(records: list[dict], cache_folder: Path, labels: Optional[Sequence[int]],
               min_voxels: int) -> list[Structure]:
    """Every (case, label value) with at least ``min_voxels`` voxels in model space."""
    out = []
    for i, rec in enumerate(records):
        lab = np.load(cache_folder / rec["file"])["label"]
        values = [v for v in np.unique(lab) if v != 0 and (labels is None or int(v) in labels)]
        for v in values:
            where = np.argwhere(lab == v)
            if len(where) < min_voxels:
                continue
            lo, hi = where.min(0), where.max(0)
            out.append(Structure(i, int(v), len(where), tuple(int(c) for c in where.mean(0).round()),
                                 (tuple(int(c) for c in lo), tuple(int(c) for c in hi))))
    return out


def _save_npz_atomic(path: Path, **arrays) -> None:
    with atomic_output(path, suffix=".npz") as tmp:  # np.savez appends .npz to names without it
        np.savez(tmp, **arrays)
