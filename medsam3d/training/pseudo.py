"""Pseudo-masks: plausible structures of a scan without labels, as extra click targets (as UnSAM and ScribblePrompt
train promptable models on masks from unsupervised hierarchical grouping).

A case's model-space image [x, y, z] (1.5 mm, CT in HU or MR) ->
  body: the largest connected foreground object, holes filled (air and padding are never a target)
  supervoxels: watershed of the smoothed intensity gradient from a regular grid of seeds inside the body, at one or
               more seed spacings (the scales)
  hierarchy: on the region adjacency graph, adjacent regions merge when their cost (difference of mean intensity
             + the mean gradient along their shared boundary) is below a level, for a ladder of levels
  selection: a region that stays (nearly) unchanged over consecutive levels (stable: it has a real boundary), whose
             boundary is sharper than its inside (contrast), of a plausible size (voxels, share of the body) and
             compactness (volume / bounding box, faces / volume^(2/3)); every region is one connected piece, a union
             of adjacent connected supervoxels
Every step is deterministic (no random draw; ties broken by region index), so a case and its settings always give
the same masks. ``pseudo_masks`` returns them bit-packed in their bounding boxes (``PseudoMasks``); ``pseudo_for``
caches them as npz beside the preprocessed case, keyed by the case file and the settings, and refuses a held-out
case.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import watershed

from ..errors import InputError
from ..atomic import atomic_output
from .synth.bank import split_heldout, unpack_mask

PSEUDO_VERSION = 1  # bump when the algorithm changes: old caches are then ignored
# CT: HU -> feature, piecewise linear; soft tissue (-150..250 HU) gets half the range, so organs, muscle and fat
# differ as much as lung, fat and bone do
CT_HU = (-1000.0, -500.0, -150.0, 250.0, 1500.0)
CT_FEATURE = (0.0, 0.15, 0.3, 0.8, 1.0)


@dataclass(frozen=True)
class PseudoSettings:
    scales: tuple[int, ...] = (6, 10)  # seed spacing of the supervoxels, voxels (one supervoxel map per scale)
    # merge until the cheapest adjacent pair costs more than this (feature units: CT soft tissue spans 0.5 over
    # 400 HU, MR its 1st-99th percentiles 1); sorted ascending
    levels: tuple[float, ...] = (0.02, 0.03, 0.045, 0.065, 0.09, 0.12, 0.16)
    persist: int = 2  # a region counts when it stays (nearly) unchanged over this many consecutive levels
    grow: float = 0.1  # "nearly": it gains at most this share of its voxels
    min_contrast: float = 1.4  # mean gradient on its boundary / inside: an object, not a strip along an edge
    smooth: float = 1.0  # Gaussian sigma (voxels) of the gradient the watershed floods
    boundary: float = 0.5  # weight of the mean gradient along a shared boundary in the merge cost
    min_voxels: int = 300  # ~1 ml at 1.5 mm
    max_voxels: int = 700_000  # ~2.4 l: a liver or a brain, not half a body
    max_body_share: float = 0.6  # a region covering more of the body is the body, not a structure
    min_fill: float = 0.05  # voxels / bounding-box voxels
    max_surface: float = 30.0  # boundary faces / voxels^(2/3): ~7 for a ball, ~25 for a skull, more for a fringe

    @classmethod
    def from_options(cls, options: Optional[dict]) -> "PseudoSettings":
        options = dict(options or {})
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"unknown pseudo-mask setting(s) {', '.join(unknown)}")
        for key in ("scales", "levels"):
            if key in options:
                options[key] = tuple(options[key])
        return cls(**options)

    def key(self) -> str:
        text = json.dumps({"v": PSEUDO_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class PseudoMasks:
    """Pseudo-structures of one case, each a binary mask in its bounding box, bit-packed."""

    bits: np.ndarray  # uint8: np.packbits of every box mask (C order), concatenated
    offsets: np.ndarray  # (n + 1,) int64: mask i is bits[offsets[i]:offsets[i + 1]]
    lo: np.ndarray  # (n, 3) int32: box corner in the case (voxels, x y z)
    shapes: np.ndarray  # (n, 3) int32: box size
    voxels: np.ndarray  # (n,) int64
    centers: np.ndarray  # (n, 3) int32: the voxel of the mask nearest its centroid
    scale: np.ndarray  # (n,) int32: seed spacing it was grown from
    level: np.ndarray  # (n,) int32: index into settings.levels
    case_shape: tuple[int, int, int]
    _cache: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.voxels)

    def box(self, i: int) -> np.ndarray:
        """Mask i as a bool array of its box size."""
        if i not in self._cache:
            self._cache[i] = unpack_mask(self.bits, self.offsets, self.shapes, i).astype(bool)
        return self._cache[i]

    def mask(self, i: int) -> np.ndarray:
        """Mask i on the case's whole grid."""
        out = np.zeros(self.case_shape, bool)
        out[tuple(slice(a, a + s) for a, s in zip(self.lo[i], self.shapes[i]))] = self.box(i)
        return out

    def crop(self, i: int, lo: np.ndarray, size: int) -> np.ndarray:
        """Mask i inside the size^3 window whose corner is ``lo`` (voxels; the window may leave the case)."""
        out = np.zeros((size,) * 3, np.float32)
        a = np.maximum(self.lo[i], lo)
        b = np.minimum(self.lo[i] + self.shapes[i], lo + size)
        if np.all(b > a):
            src = tuple(slice(s - o, e - o) for s, e, o in zip(a, b, self.lo[i]))
            dst = tuple(slice(s - o, e - o) for s, e, o in zip(a, b, lo))
            out[dst] = self.box(i)[src]
        return out

    def save(self, path: Path, meta: dict) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(Path(path), suffix=".npz") as tmp:
            np.savez_compressed(tmp, bits=self.bits, offsets=self.offsets, lo=self.lo, shapes=self.shapes,
                                voxels=self.voxels, centers=self.centers, scale=self.scale, level=self.level,
                                case_shape=np.array(self.case_shape), meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: Path) -> tuple["PseudoMasks", dict]:
        with np.load(path) as data:
            arrays = {k: data[k] for k in ("bits", "offsets", "lo", "shapes", "voxels", "centers", "scale", "level")}
            meta = json.loads(str(data["meta"]))
            shape = tuple(int(s) for s in data["case_shape"])
        return cls(**arrays, case_shape=shape), meta


# ------------------------------------------------------------------------------------------ the algorithm


def features(image: np.ndarray, modality: str) -> np.ndarray:
    """Model-space image -> float32 in [0, 1]: CT through CT_HU -> CT_FEATURE, MR by its foreground's 1st-99th
    percentiles."""
    if modality.lower().startswith("ct"):
        return np.interp(image, CT_HU, CT_FEATURE).astype(np.float32)
    fg = image[image > image.min()]
    lo, hi = np.percentile(fg, [1, 99]) if fg.size else (0.0, 1.0)
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def body_mask(feature: np.ndarray, modality: str) -> np.ndarray:
    """The largest connected object brighter than air (CT: > -500 HU; MR: a tenth of its range), holes filled."""
    threshold = CT_FEATURE[1] if modality.lower().startswith("ct") else 0.1
    fg = ndimage.binary_opening(feature > threshold, iterations=2)  # cuts thin bridges to the table, coils
    lab, n = ndimage.label(fg)
    if n == 0:
        return fg
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(lab == sizes.argmax())


def supervoxels(gradient: np.ndarray, body: np.ndarray, spacing: int) -> np.ndarray:
    """Watershed of ``gradient`` inside ``body`` from seeds on a grid of ``spacing`` voxels -> int32 labels
    [x, y, z] (0 outside the body); each seed sits at the gradient minimum of its grid cell."""
    shape = np.array(gradient.shape)
    cells = -(-shape // spacing)  # ceil
    pad = cells * spacing - shape
    g = np.pad(np.where(body, gradient, np.inf), [(0, p) for p in pad], constant_values=np.inf)
    # (cx, s, cy, s, cz, s) -> per cell the flat index of its minimum
    blocks = g.reshape(cells[0], spacing, cells[1], spacing, cells[2], spacing).transpose(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(*cells, -1)
    best = blocks.argmin(-1)
    valid = np.isfinite(np.take_along_axis(blocks, best[..., None], -1)[..., 0])
    ci, cj, ck = np.nonzero(valid)
    oi, oj, ok = np.unravel_index(best[valid], (spacing,) * 3)
    markers = np.zeros(gradient.shape, np.int32)
    markers[ci * spacing + oi, cj * spacing + oj, ck * spacing + ok] = np.arange(1, len(ci) + 1)
    return watershed(gradient, markers, mask=body).astype(np.int32)


def _graph(labels: np.ndarray, n: int, edge: Optional[np.ndarray] = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Adjacency of ``labels`` (1..n, 0 = outside) -> (pairs (m, 2) with 0 < a < b; their shared faces (m,); the sum
    of ``edge`` (e.g. the gradient) over those faces, the larger of the two voxels' values (m,); each label's
    boundary faces (n + 1,), towards other labels, outside and the volume's edge)."""
    keys, weights, faces = [], [], np.zeros(n + 1, np.int64)
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        lo, hi = a[:-1].ravel(), a[1:].ravel()
        cut = np.nonzero(lo != hi)[0]
        lo, hi = lo[cut], hi[cut]
        faces += np.bincount(lo, minlength=n + 1) + np.bincount(hi, minlength=n + 1)
        faces += np.bincount(a[0].ravel(), minlength=n + 1) + np.bincount(a[-1].ravel(), minlength=n + 1)
        inner = (lo > 0) & (hi > 0)
        keys.append(np.minimum(lo, hi)[inner].astype(np.int64) * (n + 1) + np.maximum(lo, hi)[inner])
        if edge is not None:
            e = np.moveaxis(edge, axis, 0)
            weights.append(np.maximum(e[:-1].ravel()[cut], e[1:].ravel()[cut])[inner])
    uniq, inverse, shared = np.unique(np.concatenate(keys), return_inverse=True, return_counts=True)
    strength = (np.bincount(inverse, weights=np.concatenate(weights), minlength=len(uniq)) if edge is not None
                else np.zeros(len(uniq)))
    return np.stack([uniq // (n + 1), uniq % (n + 1)], 1), shared, strength, faces


@dataclass
class _Level:
    """The merged regions at one level, indexed by region id (the smallest supervoxel label in the region)."""

    root: np.ndarray  # (n + 1,) region of each supervoxel label
    count: np.ndarray  # (n + 1,) voxels (0: not a region)
    faces: np.ndarray  # (n + 1,) boundary faces
    lo: np.ndarray  # (n + 1, 3) bounding box, inclusive
    hi: np.ndarray
    contrast: np.ndarray  # (n + 1,) mean gradient on the boundary with other regions / mean gradient inside


def _hierarchy(labels: np.ndarray, feature: np.ndarray, gradient: np.ndarray, levels: Iterable[float],
               boundary: float) -> list[_Level]:
    """Merge adjacent regions whose cost (difference of mean feature + ``boundary`` x mean gradient along their
    shared faces) is at most each level, in Boruvka rounds (every region joins its cheapest neighbour, ties to the
    lower index) -> the regions at each level, in ascending order of level."""
    n = int(labels.max())
    flat = labels.ravel()
    count = np.bincount(flat, minlength=n + 1).astype(np.float64)
    count[0] = 0
    total = np.bincount(flat, weights=feature.ravel(), minlength=n + 1)
    inside = np.bincount(flat, weights=gradient.ravel(), minlength=n + 1)
    pairs, shared, strength, faces = _graph(labels, n, gradient)
    faces = faces.astype(np.float64)
    boxes = ndimage.find_objects(labels)
    lo = np.array([[b.start for b in box] if box else [1 << 30] * 3 for box in [None] + boxes], np.int64)
    hi = np.array([[b.stop - 1 for b in box] if box else [-1] * 3 for box in [None] + boxes], np.int64)
    root = np.arange(n + 1)
    out = []
    for level in sorted(levels):
        while len(pairs):
            mean = total / np.maximum(count, 1)
            cost = np.abs(mean[pairs[:, 0]] - mean[pairs[:, 1]]) + boundary * strength / shared
            ok = np.nonzero(cost <= level)[0]
            if not len(ok):
                break
            # each region's cheapest eligible edge (sorted by region, then cost, then edge index for ties)
            ends = np.concatenate([pairs[ok, 0], pairs[ok, 1]])
            edges = np.concatenate([ok, ok])
            order = np.lexsort((edges, cost[edges], ends))
            first = np.ones(len(order), bool)
            first[1:] = ends[order][1:] != ends[order][:-1]
            chosen = np.unique(edges[order][first])
            graph = coo_matrix((np.ones(len(chosen)), (pairs[chosen, 0], pairs[chosen, 1])), shape=(n + 1, n + 1))
            _, comp = connected_components(graph, directed=False)
            rep = np.full(comp.max() + 1, n + 1)
            np.minimum.at(rep, comp, np.arange(n + 1))  # a merged region takes its smallest member's id
            new = rep[comp]
            root = new[root]
            total, count, faces, inside = (np.bincount(new, weights=w, minlength=n + 1)
                                           for w in (total, count, faces, inside))
            lo_new, hi_new = np.full_like(lo, 1 << 30), np.full_like(hi, -1)
            np.minimum.at(lo_new, new, lo)
            np.maximum.at(hi_new, new, hi)
            lo, hi = lo_new, hi_new
            a, b = new[pairs[:, 0]], new[pairs[:, 1]]
            inner = a == b
            faces -= 2 * np.bincount(a[inner], weights=shared[inner], minlength=n + 1)  # faces now inside
            keep = ~inner
            key = np.minimum(a, b)[keep].astype(np.int64) * (n + 1) + np.maximum(a, b)[keep]
            uniq, inverse = np.unique(key, return_inverse=True)
            shared = np.bincount(inverse, weights=shared[keep], minlength=len(uniq))
            strength = np.bincount(inverse, weights=strength[keep], minlength=len(uniq))
            pairs = np.stack([uniq // (n + 1), uniq % (n + 1)], 1)
        ends = pairs.ravel()
        edge = (np.bincount(ends, weights=np.repeat(strength, 2), minlength=n + 1)
                / np.maximum(np.bincount(ends, weights=np.repeat(shared, 2), minlength=n + 1), 1))
        contrast = edge / np.maximum(inside / np.maximum(count, 1), 1e-6)
        out.append(_Level(root.copy(), count.copy(), faces.copy(), lo.copy(), hi.copy(), contrast))
    return out


def _stable_regions(hierarchy: list[_Level], body_voxels: int, settings: PseudoSettings
                    ) -> list[tuple[int, int]]:
    """Regions that pass the size, compactness and contrast filters and grow by at most ``settings.grow`` over
    ``settings.persist`` consecutive levels (a region with a real boundary persists; a chunk of uniform tissue
    merges on at the next level) -> [(level index, region id)], a region once, at the first level it is stable at."""
    emitted: dict[int, float] = {}
    out = []
    for k in range(len(hierarchy) - settings.persist + 1):
        here = hierarchy[k]
        ids = np.nonzero(here.count)[0]
        v = here.count[ids]
        stable = np.ones(len(ids), bool)
        for later in hierarchy[k + 1:k + settings.persist]:
            stable &= later.count[later.root[ids]] <= (1 + settings.grow) * v
        box = np.prod(here.hi[ids] - here.lo[ids] + 1, axis=1)
        good = (stable & (v >= settings.min_voxels) & (v <= min(settings.max_voxels, settings.max_body_share
                                                                   * body_voxels))
                & (v / box >= settings.min_fill) & (here.faces[ids] / v ** (2 / 3) <= settings.max_surface)
                & (here.contrast[ids] >= settings.min_contrast))
        for r, n in zip(ids[good].tolist(), v[good].tolist()):
            if r in emitted and n <= (1 + settings.grow) * emitted[r]:
                continue  # the same region, a little grown since a lower level
            emitted[r] = n
            out.append((k, r))
    return out


def pseudo_masks(image: np.ndarray, modality: str, settings: PseudoSettings = PseudoSettings()) -> PseudoMasks:
    """Model-space image [x, y, z] -> its pseudo-structures (deterministic)."""
    feature = features(image, modality)
    body = body_mask(feature, modality)
    gradient = ndimage.gaussian_gradient_magnitude(feature, settings.smooth)
    levels = sorted(settings.levels)
    packed, lo, shapes, voxels, centers, scales, level_of = [], [], [], [], [], [], []
    for scale in settings.scales:
        labels = supervoxels(gradient, body, int(scale))
        hierarchy = _hierarchy(labels, feature, gradient, levels, settings.boundary)
        for k, r in _stable_regions(hierarchy, int(body.sum()), settings):
            h = hierarchy[k]
            box = tuple(slice(int(a), int(b) + 1) for a, b in zip(h.lo[r], h.hi[r]))
            sub = np.isin(labels[box], np.nonzero(h.root == r)[0])
            where = np.argwhere(sub)
            near = where[np.argmin(((where - where.mean(0)) ** 2).sum(1))]
            corner = h.lo[r].astype(np.int32)
            packed.append(np.packbits(sub.ravel()))
            lo.append(corner)
            shapes.append(sub.shape)
            voxels.append(int(sub.sum()))
            centers.append(corner + near)
            scales.append(scale)
            level_of.append(k)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in packed])]).astype(np.int64)
    return PseudoMasks(np.concatenate(packed) if packed else np.zeros(0, np.uint8), offsets,
                       np.array(lo, np.int32).reshape(-1, 3), np.array(shapes, np.int32).reshape(-1, 3),
                       np.array(voxels, np.int64), np.array(centers, np.int32).reshape(-1, 3),
                       np.array(scales, np.int32), np.array(level_of, np.int32), tuple(int(s) for s in image.shape))


# ------------------------------------------------------------------------------------ cache and training source


def pseudo_for(record: dict, folder: Path, settings: PseudoSettings, heldout: Iterable[str] = (),
               log=print) -> PseudoMasks:
    """The pseudo-masks of one preprocessed case (a ``data.preprocess`` record in ``folder``), computed once and
    cached as folder/pseudo/CASE_KEY.npz (the folder is already keyed by the case files and the spacing, KEY by
    the settings); an InputError for a held-out case."""
    case = record["case_id"]
    if case in set(heldout) | split_heldout():
        raise InputError(f"{case} is held out: no pseudo-masks are made for it")
    path = Path(folder) / "pseudo" / f"{case}_{settings.key()}.npz"
    if path.is_file():
        return PseudoMasks.load(path)[0]
    with np.load(Path(folder) / record["file"]) as data:
        image = data["image"]
    start = time.perf_counter()
    masks = pseudo_masks(image, record.get("modality", "unknown"), settings)
    seconds = time.perf_counter() - start
    masks.save(path, {"case_id": case, "settings": asdict(settings), "seconds": round(seconds, 2)})
    log(f"pseudo-masks: {case} {tuple(image.shape)}: {len(masks)} in {seconds:.1f} s -> {path.name}")
    return masks


def preprocess_unlabelled(roots: Iterable[str | Path], cache: str | Path, spacing: float = 1.5,
                          holdout: Iterable[str] = (), log=print) -> tuple[Path, list[dict]]:
    """Images without labels (an ``Unlabelled`` folder: imagesTr/CASE_0000.nii.gz and a dataset.json whose
    "modality" maps case -> CT/MR) in model space, cached like ``data.preprocess`` -> (folder, records).
    Held-out cases are left out."""
    import SimpleITK as sitk

    from ..datasets import Case
    from .data import fingerprint, to_model_space

    held = set(holdout) | split_heldout()
    cases = []
    for root in map(Path, roots):
        meta_path = root / "dataset.json"
        if not meta_path.is_file():
            raise InputError(f"{root} has no dataset.json (expected an Unlabelled folder of fetch_public_data.sh)")
        meta = json.loads(meta_path.read_text())
        modality = meta.get("modality") or {}
        default = str((meta.get("channel_names") or {}).get("0", "unknown"))
        for image in sorted((root / "imagesTr").glob("*_0000.nii.gz")):
            case_id = image.name[: -len("_0000.nii.gz")]
            if case_id in held:
                log(f"unlabelled: held-out case {case_id} left out")
                continue
            cases.append(Case(case_id, image, None, str(modality.get(case_id, default))))
    folder = Path(cache) / "unlabelled" / fingerprint(cases, {"spacing": spacing, "unlabelled": True})
    index = folder / "cases.json"
    if index.is_file():
        return folder, json.loads(index.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for case in cases:
        image = sitk.ReadImage(str(case.image), sitk.sitkFloat32)
        fill = float(sitk.GetArrayViewFromImage(image).min())
        array = to_model_space(image, spacing, sitk.sitkLinear, fill, sitk.sitkFloat32)
        with atomic_output(folder / f"{case.case_id}.npz", suffix=".npz") as tmp:
            np.savez(tmp, image=array)
        records.append({"case_id": case.case_id, "file": f"{case.case_id}.npz", "modality": case.modality,
                        "shape": list(array.shape), "source": str(case.image), "labels": None})
    index.write_text(json.dumps(records, indent=1))
    return folder, records


class PseudoSource:
    """Pseudo-masks of training cases, to draw click targets from: a case uniformly, then one of its masks."""

    def __init__(self, cases: list[tuple[dict, Path, PseudoMasks]], heldout: Iterable[str] = ()) -> None:
        bad = sorted({r["case_id"] for r, _, _ in cases} & (set(heldout) | split_heldout()))
        if bad:
            raise InputError(f"pseudo-masks of held-out case(s) {', '.join(bad)} must not be trained on")
        self.cases = [(r, Path(f), m) for r, f, m in cases if len(m)]
        if not self.cases:
            raise InputError("no pseudo-mask in any training case (data.pseudo settings too strict?)")

    def __len__(self) -> int:
        return sum(len(m) for _, _, m in self.cases)

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """-> (case index, mask index)."""
        c = int(rng.integers(len(self.cases)))
        return c, int(rng.integers(len(self.cases[c][2])))

    def image(self, c: int) -> np.ndarray:
        record, folder, _ = self.cases[c]
        if "_image" not in record:  # loaded once per process; records are this source's own copies
            with np.load(folder / record["file"]) as data:
                record["_image"] = data["image"]
        return record["_image"]


def pseudo_source(data: dict, records: list[dict], folder: Path, log=print) -> Optional[PseudoSource]:
    """A run's ``data`` settings -> the pseudo-masks of its training cases (the preprocessed ``records`` in
    ``folder`` and the images of ``data.pseudo.roots``), or None when ``data.pseudo_fraction`` is 0."""
    fraction = float(data.get("pseudo_fraction", 0.0))
    composed = float(data.get("anatomy_fraction", 0.0)) + float(data.get("procedural_fraction", 0.0))
    if fraction < 0 or composed + fraction > 1:
        raise InputError("data.pseudo_fraction must be >= 0, and with the composed scenes' fractions sum to at most 1")
    if fraction == 0:
        return None
    options = dict(data.get("pseudo") or {})
    roots = options.pop("roots", None) or []
    settings = PseudoSettings.from_options(options)
    heldout = list(data.get("holdout", []))
    cases = [(dict(r), Path(folder), r) for r in records if r["case_id"] not in set(heldout) | split_heldout()]
    if roots:
        extra_folder, extra = preprocess_unlabelled(roots, Path(folder).parent, float(data.get("spacing", 1.5)),
                                                    heldout, log)
        cases += [(dict(r), extra_folder, r) for r in extra]
    out = [(record, where, pseudo_for(original, where, settings, heldout, log)) for record, where, original in cases]
    source = PseudoSource(out, heldout)
    log(f"pseudo-masks: {len(source)} from {len(source.cases)} case(s)")
    return source
