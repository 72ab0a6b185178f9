"""Intensity handling per modality, before the model's z-score: the one piece of preprocessing that training and
inference share (kept free of SimpleITK, so a training job needs only numpy, torch and MONAI)."""

from __future__ import annotations

import re

import numpy as np

from .errors import InputError

Modality = str  # "ct" or "mr" (every non-CT modality: MR, synthetic, PET, ... has no absolute scale)
MODALITIES = ("ct", "mr")
CT_HU_RANGE = (-1024.0, 3071.0)  # the 12-bit Hounsfield range; padding (-2048, -3024) and metal fall outside
MR_PERCENTILES = (0.5, 99.5)  # robust range of the foreground: a few hot voxels must not set the scale


def check_modality(choice: str, what: str = "modality") -> str:
    """A user's choice -> "auto", "ct" or "mr"; anything else is an InputError naming ``what`` was given."""
    choice = str(choice).lower()
    if choice not in ("auto", *MODALITIES):
        raise InputError(f"unknown {what} {choice!r}; use auto, {' or '.join(MODALITIES)}")
    return choice


def modality_of(name: str) -> Modality:
    """A dataset's channel name ("CT", "MRI", "T1", "ADC", ...) or a CLI choice -> "ct" or "mr"."""
    words = re.split(r"[^a-z]+", str(name).lower())
    return "ct" if any(w in ("ct", "cta", "cect", "ncct") for w in words) else "mr"


def guess_modality(array: np.ndarray) -> Modality:
    """CT when at least 1% of the scan lies at or below -500 (air in Hounsfield units); MR never goes there.
    Looks at every 4th voxel per axis, which is plenty and fast on a 512x512x300 scan."""
    sample = np.asarray(array[::4, ::4, ::4])
    return "ct" if np.count_nonzero(sample <= -500) >= 0.01 * sample.size else "mr"


def normalise(crop: np.ndarray, modality: Modality) -> np.ndarray:
    """Per-modality intensity handling before the model's z-score over voxels > 0 (``zscore_foreground``).

    CT: clip to the 12-bit HU range, so scanner padding and metal do not move the statistics (inside the range this
    is exactly SAM-Med3D's normalisation, so its checkpoints see what they were trained on). MR and the rest: clip
    to the 0.5-99.5 percentiles of the crop's voxels > 0, as MR has no absolute scale and hot spots are common."""
    if modality == "ct":
        crop = np.clip(crop, *CT_HU_RANGE)
    elif modality == "mr":
        positive = crop[crop > 0]
        if positive.size > 1:
            lo, hi = np.percentile(positive, MR_PERCENTILES)
            crop = np.clip(crop, min(float(lo), 0.0), float(hi))
    else:
        raise ValueError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")
    return zscore_foreground(crop)


def zscore_foreground(crop: np.ndarray) -> np.ndarray:
    """SAM-Med3D's normalisation: z-score with mean and std over voxels > 0 (whole crop if none)."""
    foreground = crop[crop > 0]
    values = foreground if foreground.size > 1 else crop.reshape(-1)
    std = float(values.std())
    return ((crop - float(values.mean())) / (std if std > 1e-8 else 1.0)).astype(np.float32)
