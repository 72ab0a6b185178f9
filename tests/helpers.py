"""Synthetic volumes with known geometry, and a stand-in model that thresholds intensity."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from medsam3d.io import Volume


def rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


GEOMETRIES = {
    # NIfTI's canonical RAS+ (index axes point to R, A, S), anisotropic
    "ras": dict(direction=np.diag([-1.0, -1.0, 1.0]), spacing=(0.8, 0.9, 2.5)),
    # ITK/DICOM LPS
    "lps": dict(direction=np.eye(3), spacing=(1.2, 0.9, 2.0)),
    # oblique and flipped
    "oblique": dict(direction=rotation("z", 25) @ rotation("x", -15) @ np.diag([1.0, -1.0, 1.0]),
                    spacing=(1.0, 1.3, 1.7)),
}

SPHERE_CENTER_LPS = np.array([-12.0, 30.0, 55.0])
SPHERE_RADIUS = 28.0


def sphere_volume(geometry: str, extent_mm: float = 150.0, radius: float = SPHERE_RADIUS) -> tuple[Volume, np.ndarray]:
    """A bright sphere (100) on a dim background (10), centred at SPHERE_CENTER_LPS -> (volume, true mask)."""
    g = GEOMETRIES[geometry]
    spacing = np.asarray(g["spacing"], dtype=np.float64)
    shape = tuple(int(round(extent_mm / s)) for s in spacing)
    direction = np.asarray(g["direction"], dtype=np.float64)
    # place the grid so that its centre is the sphere's centre shifted a little off-grid
    centre_ijk = (np.asarray(shape) - 1) / 2 + np.array([3.3, -4.6, 2.2])
    origin = SPHERE_CENTER_LPS - (direction * spacing) @ centre_ijk
    volume = Volume(np.zeros(shape, dtype=np.int16), spacing, origin, direction)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    inside = (np.linalg.norm(volume.ijk_to_lps(ijk) - SPHERE_CENTER_LPS, axis=1) <= radius).reshape(shape)
    volume.array = np.where(inside, 100, 10).astype(np.int16)
    return volume, inside


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


class ThresholdModel:
    """Stand-in for a trained model: the 'embedding' is the crop, the logits say 'brighter than halfway'."""

    name = "threshold-stand-in"
    is_trained = True

    def __init__(self, img_size: int = 128) -> None:
        self.config = SimpleNamespace(img_size=img_size, box_prompts=True)
        self.decode_calls = 0
        self.encode_calls = 0

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.encode_calls += 1
        return image

    def decode(self, embedding, points=None, labels=None, boxes=None, mask_input=None, multimask_output=False,
               keep_best=False):  # keep_best ignored: the Segmenter must pick
        self.decode_calls += 1
        midway = (embedding.amax() + embedding.amin()) / 2
        logits = F.avg_pool3d(embedding - midway, 4) * 10.0
        return logits, torch.ones(embedding.shape[0], 1)
