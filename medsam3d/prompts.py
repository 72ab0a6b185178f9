"""Prompts in the user's terms -> voxel indices (ijk) of a ``Volume``: the one place frames are converted.

Frames: ``ijk`` (voxel indices in the file's index order, as 3D Slicer and ITK-SNAP show them), ``ras``
(NIfTI, Slicer world coordinates, mm) and ``lps`` (ITK, DICOM world coordinates, mm).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import numpy as np

from .errors import InputError
from .io import Volume

Frame = Literal["ijk", "ras", "lps"]
FRAMES = ("ijk", "ras", "lps")


def parse_numbers(text: str, count: int, what: str) -> list[float]:
    """'x,y,z' -> [x, y, z], with a clear error for anything else."""
    parts = [p.strip() for p in str(text).replace(";", ",").split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count or not all(np.isfinite(values)):
        example = ",".join(["X", "Y", "Z"] if count == 3 else ["X0", "Y0", "Z0", "X1", "Y1", "Z1"])
        raise InputError(f"{what} must be {count} comma-separated numbers like {example}, got {text!r}")
    return values


def check_frame(frame: str) -> Frame:
    if frame not in FRAMES:
        raise InputError(f"unknown coordinate frame {frame!r}; use one of {', '.join(FRAMES)}")
    return frame  # type: ignore[return-value]


def to_ijk(volume: Volume, xyz: Sequence[float], frame: Frame, what: str = "point") -> np.ndarray:
    """One coordinate triplet in ``frame`` -> continuous voxel index (i, j, k), checked to lie in the image."""
    frame = check_frame(frame)
    xyz = np.asarray(xyz, dtype=np.float64)
    if frame == "ijk":
        if (xyz < 0).any():
            raise InputError(f"{what} {_fmt(xyz)} has a negative voxel index")
        ijk = xyz
    elif frame == "ras":
        ijk = volume.ras_to_ijk(xyz)
    else:
        ijk = volume.lps_to_ijk(xyz)
    upper = np.asarray(volume.shape) - 0.5
    if (ijk < -0.5).any() or (ijk > upper).any():
        raise InputError(f"{what} {_fmt(xyz)} ({frame}) is outside the image: voxel {_fmt(ijk)} not within "
                         f"{volume.shape}")
    return ijk


def _fmt(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:g}" for x in np.round(v, 2)) + ")"


@dataclass
class Prompts:
    """Resolved prompts for one object, all in voxel indices (ijk) of the volume."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (N, 3)
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))  # (N,) 1 / 0
    box: Optional[np.ndarray] = None  # (2, 3) opposite corners
    mask: Optional[np.ndarray] = None  # (I, J, K) bool, a previous result to refine
    newest: int = -1  # index of the click given last (``resolve`` puts positives first): what a refinement adds

    def is_empty(self) -> bool:
        return len(self.points) == 0 and self.box is None and self.mask is None

    def describe(self, volume: Volume) -> list[str]:
        """Human-readable lines: what each prompt resolved to, in voxels and mm (RAS)."""
        lines = []
        for p, label in zip(self.points, self.labels):
            kind = "positive" if label == 1 else "negative"
            lines.append(f"{kind} point: voxel {_fmt(p)} = RAS {_fmt(volume.ijk_to_ras(p))} mm")
        if self.box is not None:
            lines.append(f"box: voxels {_fmt(self.box[0])} - {_fmt(self.box[1])}")
        if self.mask is not None:
            lines.append(f"mask prompt: {int(self.mask.sum())} voxels")
        return lines


def resolve(volume: Volume, positive: Sequence[Sequence[float]] = (), negative: Sequence[Sequence[float]] = (),
            box: Optional[Sequence[float]] = None, mask: Optional[np.ndarray] = None, frame: Frame = "ijk") -> Prompts:
    """User prompts in ``frame`` -> ``Prompts`` in voxel indices, every one checked."""
    pts = [to_ijk(volume, p, frame, "point") for p in positive]
    pts += [to_ijk(volume, p, frame, "negative point") for p in negative]
    labels = np.array([1] * len(positive) + [0] * len(negative), dtype=np.int64)
    box_ijk = None
    if box is not None:
        box = np.asarray(box, dtype=np.float64).reshape(2, 3)
        corners = np.stack([to_ijk(volume, c, frame, "box corner") for c in box])
        box_ijk = np.stack([corners.min(0), corners.max(0)])
        if (box_ijk[1] - box_ijk[0] < 1).any():
            raise InputError(f"box {_fmt(box.reshape(-1))} has zero size along an axis")
    if mask is not None:
        mask = np.asarray(mask) > 0
        if mask.shape != volume.shape:
            raise InputError(f"mask prompt has shape {mask.shape}, the image {volume.shape}")
        if not mask.any():
            raise InputError("mask prompt is empty")
    prompts = Prompts(np.array(pts).reshape(-1, 3), labels, box_ijk, mask)
    if prompts.is_empty():
        raise InputError("no prompt given: add --point, --box or --mask")
    if len(positive) == 0 and box is None and mask is None:
        raise InputError("only negative points given: add at least one positive point, a box or a mask")
    return prompts
