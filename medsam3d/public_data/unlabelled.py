"""The scans without labels (for pseudo-masks): read from their archives into images with what is known of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .sources import INVESALIUS, INVESALIUS_FILE, PYDEFACE, PYDEFACE_HEAD, Source


@dataclass
class UnlabelledCase:
    case_id: str
    subject: str
    modality: str
    image: sitk.Image
    source: Source
    file: str
    notes: list[str]


def invesalius_head_ct(root: Path) -> UnlabelledCase:
    """InVesalius' Cranium example: int16 HU voxels of a head CT in a raw matrix (shape and spacing in its plist)."""
    import plistlib

    main = next((root / "Cranium").glob("*/main.plist"))
    meta = plistlib.loads(main.read_bytes())
    shape, spacing = tuple(meta["matrix"]["shape"]), tuple(float(s) for s in meta["spacing"])
    raw = np.fromfile(main.parent / meta["matrix"]["filename"], dtype=meta["matrix"]["dtype"])
    if meta["modality"] != "CT" or raw.size != np.prod(shape):
        raise RuntimeError(f"Cranium.inv3: {meta['modality']} matrix of {raw.size} voxels, expected CT {shape}")
    # (slices, rows, columns); InVesalius keeps rows flipped (the head rest, posterior, is at row 0): flip them
    # back to DICOM order, so the axes are L, P, S (LPS) up to the unrecorded left-right sense.
    array = np.ascontiguousarray(raw.reshape(shape)[:, ::-1, :])
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return UnlabelledCase("invesalius_head_ct", "invesalius_promed_ct_0051", "CT", image, INVESALIUS,
                      f"{INVESALIUS_FILE}: {main.parent.name}/{meta['matrix']['filename']} + main.plist",
                      [f"head CT '{meta['name']}' ({shape[2]}x{shape[1]}x{shape[0]}, "
                       f"{spacing[0]:.3f}x{spacing[1]:.3f}x{spacing[2]:g} mm), from skull base to vertex",
                       "no DICOM header: origin 0, axes L, P, S assumed from the anatomy (the file records no "
                       "left-right sense); its two masks are bone/skin thresholds, not used"])


def pydeface_mean_head(root: Path) -> UnlabelledCase:
    image = sitk.ReadImage(str(root / PYDEFACE_HEAD))
    return UnlabelledCase("pydeface_mean_head", "pydeface_mean_head_population_average", "MR", image, PYDEFACE,
                      PYDEFACE_HEAD, ["mean head T1 (176x256x256, 1x0.98x0.98 mm) of pydeface's registration "
                                      "template: an average of several subjects, face and neck included"])

