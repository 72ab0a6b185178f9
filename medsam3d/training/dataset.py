"""Training crops: one structure of one preprocessed case -> (image crop, binary target), and the sampler.

Every random choice for a sample (crop jitter, synthetic painting, augmentation) is drawn from a generator
seeded by (run seed, structure index, draw number), and the sampler's order is a pure function of the micro-step.
So a resumed run sees exactly the samples an uninterrupted run would, whatever the number of workers.

With ``anatomy_fraction`` / ``procedural_fraction`` a share of the samples is a composed synthetic scene instead
(``medsam3d.training.synth``), chosen, built and augmented from its own generator seeded by (run seed, index,
draw, 1): with both fractions 0 nothing is drawn from it and every sample is what it was without them.
With ``pseudo_fraction`` a further share (drawn from the same number) is a real crop of a training case whose
target is one of its pseudo-masks (``medsam3d.training.pseudo``): with all three fractions 0, nothing changes.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from monai import transforms as mt

from ..errors import InputError
from ..intensity import modality_of, normalise
from .data import Structure
from .pseudo import PseudoSource
from .synth import SynthConfig, bank_for, compose
from .synthetic import paint


class CropDataset(torch.utils.data.Dataset):
    def __init__(self, records: list[dict], folder: Path, structures: list[Structure], crop: int, seed: int,
                 synthetic_fraction: float = 0.0, augment: bool = True, fixed: bool = False,
                 affine_prob: float = 0.0, rotate_deg: float = 10.0, scale: float = 0.15,
                 anatomy_fraction: float = 0.0, procedural_fraction: float = 0.0,
                 synth: Optional[SynthConfig] = None, pseudo_fraction: float = 0.0,
                 pseudo: Optional[PseudoSource] = None) -> None:
        self.records, self.folder, self.structures = records, Path(folder), structures
        self.pseudo_fraction, self.pseudo = float(pseudo_fraction), pseudo
        if self.pseudo_fraction > 0 and pseudo is None:
            raise ValueError("pseudo_fraction needs a PseudoSource (pseudo)")
        self.anatomy_fraction, self.procedural_fraction = float(anatomy_fraction), float(procedural_fraction)
        if (self.anatomy_fraction > 0 or self.procedural_fraction > 0) and synth is None:
            raise ValueError("anatomy_fraction / procedural_fraction need a SynthConfig (synth)")
        self.synth = None if synth is None else {
            kind: replace(synth, kind=kind, size=crop, seed=seed) for kind in ("anatomy", "procedural")}
        self.crop, self.seed = crop, seed
        self.synthetic_fraction, self.augment, self.fixed = synthetic_fraction, augment, fixed
        flips = [mt.RandFlipd(["image", "target"], prob=0.5, spatial_axis=a) for a in range(3)]
        # rotation and zoom about the crop's centre; the image's edge voxels fill the corners ("border"), the
        # target is resampled linearly (it is a soft target: InteractiveStep averages it to the loss grid)
        angle = np.deg2rad(rotate_deg)
        affine = mt.RandAffined(["image", "target"], prob=affine_prob, rotate_range=(angle,) * 3,
                                scale_range=(scale,) * 3, mode=("bilinear", "bilinear"),
                                padding_mode=("border", "zeros"))
        self.spatial = mt.Compose(flips + ([affine] if affine_prob > 0 else []))
        self.flips = mt.Compose(flips)  # composed scenes: already rotated, scaled and deformed shape by shape
        self.intensity = mt.Compose([
            mt.RandScaleIntensity(factors=0.1, prob=0.5),
            mt.RandShiftIntensity(offsets=0.1, prob=0.5),
            mt.RandGaussianNoise(prob=0.3, std=0.05),
            mt.RandGaussianSmooth(prob=0.2, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), sigma_z=(0.25, 1.0)),
        ])

    def __len__(self) -> int:
        return len(self.structures)

    @lru_cache(maxsize=8)
    def _case(self, case: int) -> tuple[np.ndarray, np.ndarray]:
        data = np.load(self.folder / self.records[case]["file"])
        return data["image"].astype(np.float32, copy=False), data["label"]  # packed cases: int16 HU or float16

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, draw = key
        if not self.fixed and (self.anatomy_fraction > 0 or self.procedural_fraction > 0 or self.pseudo_fraction > 0):
            pick = np.random.default_rng([self.seed, index, draw, 1])
            u = pick.random()
            composed = self.anatomy_fraction + self.procedural_fraction
            if u < composed:
                sample = self._composed("anatomy" if u < self.anatomy_fraction else "procedural", pick, index)
                if sample is not None:
                    return sample
            elif u < composed + self.pseudo_fraction:
                return self._pseudo(pick, index)
        rng = np.random.default_rng([self.seed, index, 0 if self.fixed else draw])
        s = self.structures[index]
        image, label = self._case(s.case)
        centre = np.asarray(s.center)
        if not self.fixed:  # anywhere that keeps the structure's centre well inside the crop
            centre = centre + rng.integers(-self.crop // 4, self.crop // 4 + 1, 3)
        img = _crop(image, centre, self.crop, float(image.min()))
        lab = _crop(label, centre, self.crop, 0)
        modality = modality_of(self.records[s.case].get("modality", "unknown"))
        if not self.fixed and rng.random() < self.synthetic_fraction:
            img, modality = paint(lab, rng), "mr"  # painted intensities have no absolute scale
        img = normalise(img, modality)
        target = (lab == s.value).astype(np.float32)
        return self._finish(img, target, rng, index)

    def _finish(self, img: np.ndarray, target: np.ndarray, rng: np.random.Generator, index: int,
                composed: bool = False) -> dict:
        """Normalised crop and binary target (crop^3 each) -> augmented tensors (1, crop, crop, crop)."""
        if self.augment and not self.fixed:
            state = int(rng.integers(2**31 - 1))
            spatial = self.flips if composed else self.spatial
            sample = spatial.set_random_state(seed=state)({"image": img[None], "target": target[None]})
            img = self.intensity.set_random_state(seed=state + 1)(sample["image"])
            target = np.asarray(sample["target"])[0]
            img = np.asarray(img)[0]
        return {"image": torch.as_tensor(np.ascontiguousarray(img), dtype=torch.float32)[None],
                "target": torch.as_tensor(np.ascontiguousarray(target), dtype=torch.float32)[None],
                "index": index}

    def _pseudo(self, rng: np.random.Generator, index: int) -> dict:
        """A crop of a training case around one of its pseudo-masks, which is the target."""
        c, m = self.pseudo.draw(rng)
        image, masks = self.pseudo.image(c), self.pseudo.cases[c][2]
        centre = masks.centers[m] + rng.integers(-self.crop // 4, self.crop // 4 + 1, 3)
        img = _crop(image, centre, self.crop, float(image.min()))
        target = masks.crop(m, centre - self.crop // 2, self.crop)
        img = normalise(img, modality_of(self.pseudo.cases[c][0].get("modality", "unknown")))
        return self._finish(img, target, rng, index)

    def _composed(self, kind: str, rng: np.random.Generator, index: int) -> Optional[dict]:
        """A composed scene and one of its targets; None (-> a real crop) if 3 scenes in a row had no target."""
        for _ in range(3):
            scene = compose(int(rng.integers(2**62)), self.synth[kind])
            if len(scene.targets):
                value = int(rng.choice(scene.targets))
                img = normalise(scene.image, scene.modality)
                return self._finish(img, (scene.label == value).astype(np.float32), rng, index, composed=True)
        return None


def synth_config(data: dict, records: list[dict], folder: Path, log=print) -> Optional[SynthConfig]:
    """A run's ``data`` settings -> the composed scenes' SynthConfig (with the shape bank of the preprocessed
    cases when anatomy scenes are drawn), or None when no composed scene is drawn."""
    anatomy, procedural = float(data["anatomy_fraction"]), float(data["procedural_fraction"])
    if min(anatomy, procedural) < 0 or anatomy + procedural > 1:
        raise InputError("data.anatomy_fraction and data.procedural_fraction must be >= 0 and sum to at most 1")
    if anatomy == 0 and procedural == 0:
        return None
    options = dict(data["anatomy"])
    path = options.pop("bank", None)
    bank = bank_for(records, folder, data["holdout"], float(data["spacing"]), path, log) if anatomy > 0 else None
    return SynthConfig.from_options(options, min_voxels=int(data["min_voxels"]), bank=bank)


def _crop(array: np.ndarray, centre: np.ndarray, size: int, fill: float) -> np.ndarray:
    """size^3 crop centred on ``centre`` (voxel), padded with ``fill`` where it leaves the array."""
    lo = centre - size // 2
    out = np.full((size,) * 3, fill, dtype=array.dtype)
    src = tuple(slice(max(a, 0), min(a + size, n)) for a, n in zip(lo, array.shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
    if all(s.stop > s.start for s in src):
        out[dst] = array[src]
    return out


class StepBatchSampler:
    """Batches of (structure index, draw) keys for this rank, from micro-step ``start`` on.

    Micro-step m consumes ``world * batch_size`` samples of an endless stream of epochs; epoch e is a permutation
    seeded by (seed, e). ``repeats[i]`` (default 1) is how often structure i appears in an epoch (size-aware
    sampling, ``size_repeats``); copy c of it in epoch e gets draw number e * max(repeats) + c, so every sample
    is a different crop (without repeats the draw is simply e).
    """

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int, shuffle: bool = True,
                 start: int = 0, stop: Optional[int] = None, repeats: Optional[np.ndarray] = None) -> None:
        repeats = np.ones(n, dtype=int) if repeats is None else np.asarray(repeats, dtype=int)
        self.pool = np.repeat(np.arange(n), repeats)  # structure of each slot of an epoch
        self.copy = np.concatenate([np.arange(r) for r in repeats]) if n else np.zeros(0, dtype=int)
        self.copies = int(repeats.max()) if n else 1
        self.n, self.batch_size, self.rank, self.world = len(self.pool), batch_size, rank, world
        self.seed, self.shuffle, self.start, self.stop = seed, shuffle, start, stop

    def _order(self, epoch: int) -> np.ndarray:
        """Slots of epoch ``epoch`` in the order they are drawn."""
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, 7919, epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        m = self.start
        order, order_epoch = None, -1
        while self.stop is None or m < self.stop:
            first = (m * self.world + self.rank) * self.batch_size
            batch = []
            for p in range(first, first + self.batch_size):
                epoch = p // self.n
                if epoch != order_epoch:
                    order, order_epoch = self._order(epoch), epoch
                slot = order[p % self.n]
                batch.append((int(self.pool[slot]), epoch * self.copies + int(self.copy[slot])))
            yield batch
            m += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("endless sampler")
        return self.stop - self.start


def size_repeats(voxels: np.ndarray, exponent: float, cap: int = 4) -> np.ndarray:
    """How often each structure appears per epoch: (voxels / median) ** exponent, rounded, in [1, cap].

    Most labelled structures are small (vertebrae, ribs, muscles); uniform sampling outnumbers organs about 10:1
    and teaches a single click to mean "a small blob". exponent 0 is uniform sampling.
    """
    voxels = np.asarray(voxels, dtype=float)
    if exponent <= 0 or len(voxels) == 0:
        return np.ones(len(voxels), dtype=int)
    return np.clip(np.round((voxels / np.median(voxels)) ** exponent), 1, cap).astype(int)
