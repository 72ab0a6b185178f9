"""``compose(index, config)``: one synthetic training volume, a pure function of (config.seed, index).

"anatomy" scenes (anatomix, Dey et al. 2025): a body, background parcels, then shapes from the bank, each
randomly rotated, scaled, flipped and elastically deformed, placed anywhere or touching an earlier one, over it or
wrapped around it, or a whole case's layout deformed; plus a few procedural objects (lesions inside organs,
vessels, ribs). "procedural" scenes (SynthMorph-like): the same background with procedural objects only. Either
is painted as CT or MR (paint.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple, Optional

import numpy as np

from ...errors import InputError
from .bank import ShapeBank
from .fields import Displacement
from .paint import paint
from .place import BIG_BOX, cortex, random_affine, warp
from .scene import Piece, Scene, add_body, add_parcels
from .shapes import blob, rods, sheet, tree

KINDS = ("anatomy", "procedural")


@dataclass
class SynthConfig:
    """Options of a synthetic scene (the ``data.anatomy`` keys of a training config, plus size, seed, kind)."""

    size: int = 128  # voxels per axis (the model's crop)
    seed: int = 0
    kind: str = "anatomy"  # or "procedural"
    min_shapes: int = 3  # objects per scene: bank shapes (anatomy) or procedural objects (procedural)
    max_shapes: int = 10
    procedural_shapes: int = 3  # at most this many procedural objects added to an anatomy scene
    ct_prob: float = 0.5  # chance the scene is painted as CT (HU), else MR
    elastic: float = 3.0  # spread of the smooth displacement, voxels
    rotate_deg: float = 180.0  # a bank shape's rotation about each axis (>= 180: any orientation)
    scale: tuple = (0.7, 1.3)  # a bank shape's overall zoom
    anisotropy: float = 0.2  # and per-axis factors in [1 - a, 1 + a]
    layout_prob: float = 0.3  # chance an anatomy scene starts from one case's layout, deformed as a whole
    contact_prob: float = 0.5  # chance a shape is placed against an earlier one rather than anywhere
    behind_prob: float = 0.3  # chance a shape fills only free voxels (wraps around earlier ones) instead of over
    parcel_prob: float = 0.7  # chance of background parcels inside the body
    thick_slice_prob: float = 0.4
    truncated_weight: float = 0.25  # sampling weight of bank shapes cut by their scan's edge (a flat face)
    min_voxels: int = 200  # smaller objects are not click targets
    bank: Optional[ShapeBank] = None

    @classmethod
    def from_options(cls, options: dict, **extra) -> "SynthConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"unknown data.anatomy key(s): {', '.join(unknown)}")
        values = {**options, **extra}
        if "scale" in values:
            values["scale"] = tuple(float(v) for v in values["scale"])
        return cls(**values)


class Synthetic(NamedTuple):
    image: np.ndarray  # (size, size, size) float32: HU ("ct") or arbitrary positive scale ("mr")
    label: np.ndarray  # (size, size, size) int16: 0 outside the body, 1 body, then background parcels and objects
    targets: np.ndarray  # (k,) int: labels of objects with at least min_voxels voxels
    modality: str  # "ct" or "mr": how medsam3d.intensity.normalise treats the image


def compose(index: int, config: SynthConfig) -> Synthetic:
    """One scene; the same (config, index) gives identical arrays."""
    if config.kind not in KINDS:
        raise InputError(f"synthetic kind must be {' or '.join(KINDS)}, not {config.kind!r}")
    if config.kind == "anatomy" and (config.bank is None or not len(config.bank)):
        raise InputError("anatomy scenes need a shape bank (SynthConfig.bank)")
    rng = np.random.default_rng([config.seed, index, KINDS.index(config.kind)])
    scene = Scene(config.size)
    modality = "ct" if rng.random() < config.ct_prob else "mr"
    inner = add_body(scene, rng)
    if rng.random() < config.parcel_prob:
        add_parcels(scene, rng, inner, int(rng.integers(1, 4)))
    if config.kind == "anatomy":
        _bank_shapes(scene, config, rng)
        extra = int(rng.integers(0, config.procedural_shapes + 1))
    else:
        extra = int(rng.integers(config.min_shapes, config.max_shapes + 1))
    for _ in range(extra):
        _procedural(scene, rng)
    label = scene.label_map()
    counts = np.bincount(label.ravel(), minlength=scene.n_labels)
    targets = np.array([v for v in scene.objects if counts[v] >= config.min_voxels], dtype=int)
    image = paint(scene, modality, rng, config.thick_slice_prob)
    return Synthetic(image, label, targets, modality)


def _weights(bank: ShapeBank, truncated_weight: float) -> np.ndarray:
    """A tissue class of n shapes drawn in proportion to sqrt(n): 119 bones must not crowd out the one lesion,
    nor the one grey-matter shape turn up as often as 42 organs. Cut shapes less often."""
    tissues, inverse, counts = np.unique(bank.tissues, return_inverse=True, return_counts=True)
    w = counts[inverse] ** -0.5 * np.where(bank.truncated, truncated_weight, 1.0)
    return w / w.sum()


def _bank_piece(scene: Scene, bank: ShapeBank, i: int, affine: np.ndarray, src_centre: np.ndarray,
                out_centre: np.ndarray, disp: Optional[Displacement], rng: np.random.Generator) -> Optional[Piece]:
    piece = warp(bank.mask(i), affine, src_centre, out_centre, scene.size, disp, bank.tissues[i])
    if piece is None:
        return None
    piece.hu = float(bank.hu[i])
    piece.name = f"{bank.cases[i]}/{bank.names[i]}"
    if bank.tissues[i] == "bone" and rng.random() < 0.6 and piece.mask.size < BIG_BOX:
        piece = cortex(piece, rng)
    return piece


def _bank_shapes(scene: Scene, cfg: SynthConfig, rng: np.random.Generator) -> None:
    bank, s = cfg.bank, cfg.size
    disp = Displacement(s, rng, cfg.elastic) if cfg.elastic > 0 else None
    n = int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1))
    layouts = [c for c, shape in bank.case_shapes.items() if min(shape) >= 0.75 * s]  # a slab shows its cut
    if layouts and rng.random() < cfg.layout_prob:  # one case's shapes as they lie, moved, turned, deformed
        cases = np.array(bank.cases)
        case = layouts[int(rng.integers(len(layouts)))]
        ids = np.flatnonzero(cases == case)
        j = ids[int(rng.integers(len(ids)))]
        # a point of one of its structures' boxes, moved so the crop stays inside the case (whose edges cut shapes)
        extent = np.array(bank.case_shapes[case])
        centre = np.clip(bank.origins[j] + rng.uniform(0, 1, 3) * bank.shapes[j], s / 2, extent - s / 2)
        centre = np.where(extent >= s, centre, extent / 2)
        affine = random_affine(rng, 20.0, (0.85, 1.15), 0.1)
        out_centre = s / 2 + rng.normal(0, s / 20, 3)
        reach = s * 0.9 / 0.85
        for i in rng.permutation(ids):
            lo, hi = bank.origins[i], bank.origins[i] + bank.shapes[i]
            if np.linalg.norm(np.clip(centre, lo, hi) - centre) > reach:
                continue
            scene.add(_bank_piece(scene, bank, int(i), affine, centre - lo, out_centre, disp, rng))
        n = int(rng.integers(0, 4))  # and a few strangers
    weights = _weights(bank, cfg.truncated_weight)
    for _ in range(n):
        i = int(rng.choice(len(bank), p=weights))
        affine = random_affine(rng, cfg.rotate_deg, cfg.scale, cfg.anisotropy)
        src_centre = (bank.shapes[i] - 1) / 2
        out_centre = _where(scene, rng, cfg.contact_prob, np.abs(affine) @ bank.shapes[i] / 2)
        mode = "behind" if rng.random() < cfg.behind_prob else "over"
        scene.add(_bank_piece(scene, bank, i, affine, src_centre, out_centre, disp, rng), mode)


def _where(scene: Scene, rng: np.random.Generator, contact_prob: float, half: np.ndarray) -> np.ndarray:
    """A centre for a new object of half-extent ``half``: against a random earlier object, or anywhere in the
    body within the middle 70% of the crop."""
    s = scene.size
    if scene.objects and rng.random() < contact_prob:
        lo, hi = scene.boxes[scene.objects[int(rng.integers(len(scene.objects)))]]
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        reach = (hi - lo) / 2 + half
        return (lo + hi) / 2 + direction * reach * rng.uniform(0.5, 0.9)
    for _ in range(10):
        p = rng.uniform(0.15, 0.85, 3) * s
        if scene.regions[tuple(p.astype(int))] != 0:
            break
    return p


def _procedural(scene: Scene, rng: np.random.Generator) -> None:
    """One procedural object of a random kind."""
    s = scene.size
    kind = rng.choice(["lesion", "vessel", "ribs", "sheet", "organ"], p=[0.3, 0.2, 0.15, 0.1, 0.25])
    if kind == "lesion":
        hosts = [o for o in scene.objects if scene.tissue[scene.label_of.index(o)] not in ("bone", "marrow")]
        host = int(rng.choice(hosts)) if hosts and rng.random() < 0.6 else 0
        centre = scene.inside_point(host, rng) if host else None
        radius = rng.uniform(3, 18) * rng.uniform(0.7, 1.3, 3)
        style = rng.choice(["plain", "rim", "core", "both"])
        piece = blob(rng, s, centre if centre is not None else rng.uniform(0.15, 0.85, 3) * s, radius,
                     str(rng.choice(["lesion", "lesion", "fluid"])), wobble=rng.uniform(0.05, 0.3),
                     rim="rim" if style in ("rim", "both") else None,
                     core="necrosis" if style in ("core", "both") else None)
        scene.add(piece, "inside" if centre is not None and rng.random() < 0.7 else "over", host=host)
    elif kind == "vessel":
        lungs = [o for o in scene.objects if scene.tissue[scene.label_of.index(o)] == "lung"]
        lung = int(rng.choice(lungs)) if lungs and rng.random() < 0.7 else 0
        start = scene.inside_point(lung, rng) if lung else None
        if start is not None:  # pulmonary vessels or bronchi, kept inside their lung
            tissue = str(rng.choice(["artery", "vein", "airway"]))
            scene.add(tree(rng, s, tissue, start, radius=(1.0, 3.0)), "inside", host=lung)
        else:
            scene.add(tree(rng, s, str(rng.choice(["artery", "vein"]))))
    elif kind == "ribs":
        tissue = str(rng.choice(["bone", "bone", "cartilage"]))
        for piece in rods(rng, s, tissue):
            scene.add(piece, "behind" if rng.random() < 0.3 else "over")
    elif kind == "sheet":
        tissue = str(rng.choice(["fat", "soft", "cartilage", "bone"]))
        thick = (4.0, 9.0) if tissue == "bone" else (1.5, 4.0)
        scene.add(sheet(rng, s, tissue, thick, cortex=tissue == "bone"))
    else:
        radius = rng.uniform(10, 40) * rng.uniform(0.6, 1.4, 3)
        centre = _where(scene, rng, 0.5, radius)
        tissue = str(rng.choice(["organ", "organ", "muscle", "fluid", "lung", "fat"]))
        scene.add(blob(rng, s, centre, radius, tissue, wobble=rng.uniform(0.05, 0.25), lobes=int(rng.integers(1, 4))),
                  "behind" if rng.random() < 0.4 else "over")
