"""A synthetic scene under construction: a region map in which every region has a tissue and a label.

Regions are what gets painted (a lesion's rim and core are two regions), labels are what a click selects (the
lesion, rim included). Label 0 is outside the body, the body and its background parcels are labels that are
never targets; every object added (a bank shape, a tube, a blob) gets a new label and is a candidate target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .fields import smooth_grid, upsample


@dataclass
class Piece:
    """An object in a box of the scene: ``mask`` (bool, box shape) at corner ``lo`` (may stick out of the scene)."""

    lo: np.ndarray  # (3,) int, scene voxel of mask[0, 0, 0]
    mask: np.ndarray  # (bx, by, bz) bool
    tissue: str
    parts: list = field(default_factory=list)  # [(bool mask of the box, tissue)]: sub-regions painted apart
    hu: float = float("nan")  # measured mean HU of a bank shape's source structure, nan if none
    name: str = ""  # what it is ("bank:ts_ct/liver", "tree", ...), for inspection


class Scene:
    def __init__(self, size: int) -> None:
        self.size = size
        self.regions = np.zeros((size,) * 3, dtype=np.int16)  # (x, y, z) region ids; 0: outside the body (air)
        self.tissue: list[str] = ["air"]  # per region
        self.label_of: list[int] = [0]  # per region
        self.hu: list[float] = [float("nan")]  # per region
        self.objects: list[int] = []  # labels that are objects (target candidates)
        self.boxes: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # label -> (lo, hi) of its painted box
        self.names: dict[int, str] = {}  # label -> Piece.name
        self.n_labels = 1

    def region(self, tissue: str, label: int, hu: float = float("nan")) -> int:
        self.tissue.append(tissue)
        self.label_of.append(label)
        self.hu.append(hu)
        return len(self.tissue) - 1

    def background(self, tissue: str) -> int:
        """A new background label with one region -> its region id."""
        self.n_labels += 1
        return self.region(tissue, self.n_labels - 1)

    def add(self, piece: Optional[Piece], mode: str = "over", host: int = 0) -> int:
        """Paint ``piece`` as a new object -> its label (0 if nothing of it landed in the scene).

        mode "over": it occludes what is there; "behind": it fills only background voxels, so it wraps around the
        objects it meets and touches them; "inside": only voxels of object ``host`` (a lesion in an organ).
        Objects stay inside the body: the air around it is never painted over."""
        if piece is None:
            return 0
        lo = np.maximum(piece.lo, 0)
        hi = np.minimum(piece.lo + piece.mask.shape, self.size)
        if (hi <= lo).any():
            return 0
        inner = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, piece.lo))
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        view = self.regions[box]
        where = piece.mask[inner] & (view != 0)
        if mode == "behind":
            where = where & ~np.isin(view, self._object_regions())
        elif mode == "inside":
            where = where & np.isin(view, [r for r, lab in enumerate(self.label_of) if lab == host])
        if not where.any():
            return 0
        label = self.n_labels
        self.n_labels += 1
        view[where] = self.region(piece.tissue, label, piece.hu)
        for part, tissue in piece.parts:
            view[where & part[inner]] = self.region(tissue, label, float("nan"))
        self.objects.append(label)
        self.boxes[label] = (lo, hi)
        self.names[label] = piece.name
        return label

    def _object_regions(self) -> list[int]:
        objects = set(self.objects)
        return [r for r, lab in enumerate(self.label_of) if lab in objects]

    def inside_point(self, label: int, rng: np.random.Generator, tries: int = 20) -> Optional[np.ndarray]:
        """A random voxel of object ``label`` (None if none found in ``tries`` draws from its box)."""
        lo, hi = self.boxes[label]
        regions = [r for r, lab in enumerate(self.label_of) if lab == label]
        for _ in range(tries):
            p = rng.integers(lo, hi)
            if self.regions[tuple(p)] in regions:
                return p
        return None

    def label_map(self) -> np.ndarray:
        """(x, y, z) int16 labels."""
        return np.asarray(self.label_of, dtype=np.int16)[self.regions]


def add_body(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The body: an elliptic cylinder along z (trunk, limbs) or an ellipsoid (head), whose outline wobbles, often
    with a subcutaneous fat layer; large bodies fill the whole crop, as most training crops do. -> inner mask."""
    s = scene.size
    c = s / 2 + rng.normal(0, s * 0.12, 3)
    axes = rng.uniform(0.35, 1.4, 3) * s
    x, y, z = (np.arange(s, dtype=np.float32) - ci for ci in c)
    wobble = 1.0 + 0.06 * upsample(smooth_grid(4, rng, work=16)[..., :1], (s, s, 1))  # (s, s, 1): outline only
    if rng.random() < 0.75:  # cylinder: its cross-section changes slowly along z
        taper = 1.0 + rng.uniform(-0.3, 0.3) * z / s
        d = ((x[:, None, None] / axes[0]) ** 2 + (y[None, :, None] / axes[1]) ** 2) * wobble / taper
    else:
        axes *= 0.6
        d = ((x[:, None, None] / axes[0]) ** 2 + (y[None, :, None] / axes[1]) ** 2) * wobble + (z / axes[2]) ** 2
    d = np.sqrt(d)
    body = scene.background(str(rng.choice(["soft", "fat", "muscle"])))
    scene.regions[d < 1] = body
    inner = d < 1
    if rng.random() < 0.7:
        rim = scene.background("fat")
        depth = rng.uniform(2, 14) / axes[:2].min()
        shell = (d < 1) & (d >= 1 - depth)
        scene.regions[shell] = rim
        inner &= ~shell
    return inner


def add_parcels(scene: Scene, rng: np.random.Generator, inner: np.ndarray, fields: int) -> None:
    """Background parcels inside the body (SynthMorph-like random label maps): each of ``fields`` smooth random
    fields is cut into 2-3 bands at random quantiles, and every combination of bands is a parcel. (An argmax over
    one field per parcel, as SynthMorph does, costs a full-resolution field per parcel.)"""
    s = scene.size
    code = np.zeros((s,) * 3, dtype=np.int16)
    radix = 1
    for _ in range(fields):
        field = upsample(smooth_grid(int(rng.integers(3, 7)), rng), (s,) * 3)
        cuts = np.quantile(field[::4, ::4, ::4], np.sort(rng.uniform(0.15, 0.85, int(rng.integers(1, 3)))))
        band = sum((field > c).astype(np.int16) for c in cuts)
        code += radix * band
        radix *= len(cuts) + 1
    tissues = rng.choice(["fat", "muscle", "soft", "organ", "fat"], radix)
    ids = np.array([scene.background(str(t)) for t in tissues], dtype=np.int16)
    scene.regions = np.where(inner, ids[code], scene.regions)
