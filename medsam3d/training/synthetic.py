"""Synthetic training volumes painted from label maps (the SynthSeg idea), and a toy dataset for smoke runs.

``paint`` gives every label its own random intensity and texture, then a smooth multiplicative bias field,
noise, blur and a random loss of resolution along one axis. A model trained on such volumes cannot rely on
the absolute intensity of any organ, only on "this region differs from its surroundings, and the click is in
it": the class-agnostic skill a promptable model needs, learnable from few labelled scans.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage


def paint(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Label map (X, Y, Z) ints -> float32 image of the same shape, intensities roughly in [0, 1]."""
    values = np.unique(label)
    lut = np.zeros(int(values.max()) + 1, dtype=np.float32)
    noise_sd = np.zeros_like(lut)
    lut[values] = rng.uniform(0.0, 1.0, len(values))
    noise_sd[values] = rng.uniform(0.0, 0.08, len(values))
    image = lut[label] + noise_sd[label] * rng.standard_normal(label.shape).astype(np.float32)
    # smooth multiplicative bias field: a coarse random grid, upsampled
    coarse = rng.normal(0.0, rng.uniform(0.0, 0.3), (4, 4, 4)).astype(np.float32)
    zoom = [s / 4 for s in label.shape]
    image *= np.exp(ndimage.zoom(coarse, zoom, order=1, mode="nearest"))[: label.shape[0], : label.shape[1],
                                                                          : label.shape[2]]
    image = ndimage.gaussian_filter(image, sigma=rng.uniform(0.0, 1.0))
    if rng.random() < 0.5:  # thick slices along one axis: down- and up-sample
        axis, factor = int(rng.integers(3)), float(rng.uniform(1.5, 4.0))
        shrink = [1.0, 1.0, 1.0]
        shrink[axis] = 1.0 / factor
        low = ndimage.zoom(image, shrink, order=1)
        back = [s / ls for s, ls in zip(image.shape, low.shape)]
        image = ndimage.zoom(low, back, order=1)[: label.shape[0], : label.shape[1], : label.shape[2]]
    image += rng.normal(0.0, rng.uniform(0.0, 0.03), image.shape).astype(np.float32)
    return image.astype(np.float32)


def toy_case(shape: tuple[int, int, int], rng: np.random.Generator, n_objects: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like toy scan: a body ellipsoid holding ``n_objects`` organ-like ellipsoids (labels 1..n)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"), -1)
    body = ((grid / [0.9, 0.8, 0.95]) ** 2).sum(-1) <= 1
    label = np.zeros(shape, dtype=np.uint8)
    image = np.where(body, 30.0, -1000.0).astype(np.float32)
    for value in range(1, n_objects + 1):
        centre = rng.uniform(-0.45, 0.45, 3)
        radii = rng.uniform(0.15, 0.35, 3)
        inside = (((grid - centre) / radii) ** 2).sum(-1) <= 1
        inside &= body
        label[inside] = value
        image[inside] = rng.uniform(60, 250)
    image += rng.normal(0, 15, shape).astype(np.float32)
    return image.astype(np.int16), label


def write_toy_dataset(root: str | Path, n_cases: int = 4, shape: tuple[int, int, int] = (64, 64, 48),
                      spacing: tuple[float, float, float] = (2.5, 2.5, 3.0), seed: int = 0) -> Path:
    """An nnU-Net v2 dataset of toy CT scans (``Dataset001_Toy``) for smoke runs and tests."""
    import SimpleITK as sitk

    from ..io import sitk_array_from_ijk

    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for n in range(n_cases):
        image, label = toy_case(shape, rng)
        for array, path in ((image, root / "imagesTr" / f"toy_{n:03d}_0000.nii.gz"),
                            (label, root / "labelsTr" / f"toy_{n:03d}.nii.gz")):
            img = sitk.GetImageFromArray(sitk_array_from_ijk(array))
            img.SetSpacing(spacing)
            img.SetOrigin((-80.0, -80.0, -70.0))
            sitk.WriteImage(img, str(path), useCompression=True)
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ_a": 1, "organ_b": 2, "organ_c": 3},
            "numTraining": n_cases, "file_ending": ".nii.gz", "name": "Toy",
            "description": "synthetic toy scans written by medsam3d.training.synthetic.write_toy_dataset"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root
