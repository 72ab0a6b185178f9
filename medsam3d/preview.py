"""``segment --preview mask.png``: three orthogonal slices through the first click, with the mask's outline and the
prompts drawn, so a user without a viewer can see what they got; below them, axial slices spread over the mask's
extent (zoomed to it), where a leak far from the click shows.

Display convention (radiological, as 3D Slicer and ITK-SNAP show it): the volume's index axes are matched to the
nearest patient axes by its direction cosines (permuted and flipped, never resampled), then

* axial: patient's right on the image's left, anterior up;
* coronal: patient's right on the image's left, superior up;
* sagittal: anterior on the image's left, superior up.

Every panel keeps the physical aspect ratio of its voxels, and the three planes share one scale (mm per pixel).
matplotlib is imported only when a preview is drawn: ``segment`` without ``--preview`` does not pay for it.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError
from .io import Volume, atomic_output, check_output_place
from .prompts import Prompts

CT_WINDOW = (40.0, 400.0)  # level, width (HU): soft tissue
MR_PERCENTILES = (1.0, 99.0)
# outline colours, one per label in order; none of them green or red (the clicks' colours)
COLOURS = ("#ffd700", "#00e5ff", "#ff40ff", "#ff8c00", "#6495ed", "#ffffff", "#d2b48c", "#b0e0e6")
WIDTH_IN, DPI = 15.0, 100  # the PNG is 1500 px wide; its height follows the scan's extent
MAX_PANELS_IN = 9.0  # a tall scan (whole body) is scaled down to keep the panels this high at most
PAD_IN, GAP_IN, TITLE_IN, LABEL_IN = 0.15, 0.2, 0.75, 0.3
MONTAGE, MAX_THUMB_IN = 6, 3.0  # axial slices over the mask's extent, below the three planes; their most height
POSITIVE, NEGATIVE = "#00ff00", "#ff3030"
MAX_LISTED = 6  # labels named in the title and the legend; more are drawn, not listed


def check_preview_path(path: str | os.PathLike) -> Path:
    """Fail early (before any work) if the preview cannot be written: a .png in an existing, writable folder."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"--preview writes a PNG image: give a .png path, got {path}")
    return check_output_place(path, "preview")


@dataclass(frozen=True)
class Canonical:
    """The volume's index axes matched to L, P, S: canonical axis d is file axis ``perm[d]``, reversed where
    ``flip[d]``. Canonical index x grows toward the patient's left, y posterior, z superior (LPS)."""

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    shape: tuple[int, int, int]  # the file's (I, J, K)
    oblique: bool  # the index axes are not exactly patient axes: panels are the nearest orthogonal ones

    @classmethod
    def of(cls, volume: Volume) -> "Canonical":
        cosines = np.abs(volume.direction)  # rows L, P, S; columns index axes i, j, k
        # the assignment of index axes to patient axes with the largest total alignment (robust near 45 degrees)
        perm = max(itertools.permutations(range(3)), key=lambda p: sum(cosines[d, p[d]] for d in range(3)))
        flip = tuple(bool(volume.direction[d, perm[d]] < 0) for d in range(3))
        oblique = bool(min(cosines[d, perm[d]] for d in range(3)) < 1 - 1e-4)
        return cls(tuple(perm), flip, volume.shape, oblique)  # type: ignore[arg-type]

    def array(self, array: np.ndarray) -> np.ndarray:
        """(I, J, K) -> (X, Y, Z) view (no copy)."""
        array = array.transpose(self.perm)
        return array[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]

    def point(self, ijk: np.ndarray) -> np.ndarray:
        """(..., 3) file ijk -> (..., 3) canonical xyz (continuous indices)."""
        p = np.asarray(ijk, dtype=np.float64)[..., list(self.perm)]
        n = np.asarray(self.shape, dtype=np.float64)[list(self.perm)]
        return np.where(self.flip, n - 1 - p, p)


@dataclass(frozen=True)
class View:
    name: str
    normal: int  # canonical axis the plane cuts (x 0, y 1, z 2)
    cols: int  # canonical axis along the image's columns (left -> right)
    rows: int  # canonical axis along its rows
    rows_reversed: bool  # rows run superior -> inferior (z reversed)
    letters: tuple[str, str, str, str]  # left, right, top, bottom edges


VIEWS = (View("axial", 2, 0, 1, False, ("R", "L", "A", "P")),
         View("coronal", 1, 0, 2, True, ("R", "L", "S", "I")),
         View("sagittal", 0, 1, 2, True, ("A", "P", "S", "I")))


def plane(view: View, canonical_array: np.ndarray, index: int) -> np.ndarray:
    """(X, Y, Z) -> the view's 2D image (rows, cols) through ``index`` along its normal."""
    # basic indexing: a view (np.take would copy the whole, possibly flipped, volume first)
    cut = canonical_array[(slice(None),) * view.normal + (index,)]  # remaining axes in order: (cols, rows)
    image = cut.T
    return image[::-1] if view.rows_reversed else image


def to_display(view: View, xyz: np.ndarray, shape_xyz: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Canonical points (..., 3) -> (column, row) on the view's image."""
    xyz = np.asarray(xyz, dtype=np.float64)
    col, row = xyz[..., view.cols], xyz[..., view.rows]
    if view.rows_reversed:
        row = shape_xyz[view.rows] - 1 - row
    return col, row


def display_window(array: np.ndarray, modality: str) -> tuple[float, float]:
    """(low, high) grey levels: CT soft tissue (W 400, L 40); anything else the volume's 1st-99th percentiles."""
    if modality == "ct":
        level, width = CT_WINDOW
        return level - width / 2, level + width / 2
    step = max(1, int(round((array.size / 2e6) ** (1 / 3))))  # ~2M voxels are plenty for percentiles
    low, high = np.percentile(np.asarray(array[::step, ::step, ::step]), MR_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def centre_of(volume: Volume, objects: Sequence[Prompts], labels: np.ndarray) -> np.ndarray:
    """The voxel the panels cut through: first positive click, else box centre, else mask prompt's centroid,
    else the result's centroid, else the volume's centre. -> (3,) int ijk."""
    first = objects[0] if objects else None
    if first is not None and (first.labels == 1).any():
        ijk = first.points[np.argmax(first.labels == 1)]
    elif first is not None and first.box is not None:
        ijk = first.box.mean(0)
    elif first is not None and first.mask is not None:
        ijk = np.argwhere(first.mask).mean(0)
    elif labels.any():
        ijk = np.argwhere(labels).mean(0)
    else:
        ijk = (np.asarray(volume.shape) - 1) / 2
    return np.clip(np.round(ijk), 0, np.asarray(volume.shape) - 1).astype(int)


def extent_slices(mask_xyz: np.ndarray, count: int) -> list[int]:
    """(X, Y, Z) mask -> up to ``count`` axial (z) indices evenly spread over the mask's inferior-superior extent:
    a leak far from the click (into a neighbouring organ) shows up in one of them."""
    zs = np.flatnonzero(mask_xyz.any(axis=(0, 1)))
    if zs.size == 0:
        return []
    span = int(zs[-1] - zs[0] + 1)
    return sorted({int(zs[0] + (n + 0.5) * span / min(count, span)) for n in range(min(count, span))})


def extent_crop(mask_xyz: np.ndarray, spacing: np.ndarray, margin_mm: float = 15.0) -> tuple[int, int, int, int]:
    """(X, Y, Z) mask -> the axial region the extent slices show, (x0, x1, y0, y1) inclusive: the mask's bounding
    box grown by a quarter of its size and ``margin_mm`` on each side (context around a small target)."""
    xs, ys = np.flatnonzero(mask_xyz.any(axis=(1, 2))), np.flatnonzero(mask_xyz.any(axis=(0, 2)))
    out = []
    for idx, n, mm in ((xs, mask_xyz.shape[0], spacing[0]), (ys, mask_xyz.shape[1], spacing[1])):
        grow = int(np.ceil((idx[-1] - idx[0] + 1) / 4 + margin_mm / mm))
        out += [max(0, int(idx[0]) - grow), min(n - 1, int(idx[-1]) + grow)]
    return tuple(out)  # type: ignore[return-value]


def layout(sizes_mm: Sequence[tuple[float, float]]) -> tuple[float, list[tuple[float, float, float, float]]]:
    """Panel sizes (width, height) in mm of axial, coronal, sagittal -> (height of the panels' area, each panel's
    (left, top, width, height) in inches; top is below the area's top edge, to the panel's title band).

    One scale (inches per mm) for all three, the larger of two arrangements: a row, or axial beside coronal over
    sagittal (which suits a thin slab or a head, whose coronal and sagittal panels are no taller than the axial)."""
    (wa, ha), (wc, hc), (ws, hs) = sizes_mm
    row = min((WIDTH_IN - 2 * PAD_IN - 2 * GAP_IN) / (wa + wc + ws), (MAX_PANELS_IN - LABEL_IN) / max(ha, hc, hs))
    stack = min((WIDTH_IN - 2 * PAD_IN - GAP_IN) / (wa + max(wc, ws)), (MAX_PANELS_IN - LABEL_IN) / ha,
                (MAX_PANELS_IN - 2 * LABEL_IN) / (hc + hs))
    s = max(row, stack)
    if row >= stack:
        left, boxes = (WIDTH_IN - (wa + wc + ws) * s - 2 * GAP_IN) / 2, []
        for w, h in sizes_mm:
            boxes.append((left, 0.0, w * s, h * s))
            left += w * s + GAP_IN
    else:
        left = (WIDTH_IN - (wa + max(wc, ws)) * s - GAP_IN) / 2
        right = left + wa * s + GAP_IN
        boxes = [(left, 0.0, wa * s, ha * s), (right, 0.0, wc * s, hc * s), (right, LABEL_IN + hc * s, ws * s, hs * s)]
    return max(top + LABEL_IN + h for _, top, _, h in boxes), boxes


def plan(sizes_mm: Sequence[tuple[float, float]], montage: int, thumb_mm: tuple[float, float] = (1.0, 1.0)
         ) -> tuple[float, list, list]:
    """Panel sizes (width, height) in mm of axial, coronal, sagittal, the number of extent slices and their
    size in mm -> (figure height, the three panels' (left, top, width, height), the extent slices' rectangles), in
    inches with ``top`` measured down from the figure's top edge to the image (its title band is above it)."""
    panels_in, boxes = layout(sizes_mm)
    panels = [(left, TITLE_IN + top + LABEL_IN, w, h) for left, top, w, h in boxes]
    height = TITLE_IN + panels_in
    thumbs = []
    if montage:
        wa, ha = thumb_mm
        w = (WIDTH_IN - 2 * PAD_IN - (MONTAGE - 1) * GAP_IN) / MONTAGE
        w = min(w, MAX_THUMB_IN * wa / ha)  # a tall axial (sagittal-like scan) keeps thumbnails this high at most
        top = height + GAP_IN + 2 * LABEL_IN  # a heading band, then each thumbnail's title band
        thumbs = [(PAD_IN + n * (w + GAP_IN), top, w, w * ha / wa) for n in range(montage)]
        height = top + w * ha / wa
    return np.ceil((height + PAD_IN) * DPI) / DPI, panels, thumbs  # a whole number of pixels


def write_preview(path: str | os.PathLike, volume: Volume, labels: np.ndarray, objects: Sequence[Prompts] = (),
                  modality: str = "mr", name: str = "") -> Path:
    """Draw the three planes through the first click, and axial slices over the mask's extent; write them
    atomically as a PNG.

    labels: (I, J, K) label map on ``volume``'s grid (0 background); objects: each object's resolved prompts (the
    first positive click centres the panels); modality: "ct" or "mr", as the segmenter resolved it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg, without touching pyplot's global backend
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    path = check_preview_path(path)
    scene = _Scene(volume, labels, objects, modality)
    orient, shape, spacing = scene.orient, scene.image.shape, scene.spacing
    centre_ijk = centre_of(volume, objects, labels)
    centre = orient.point(centre_ijk).round().astype(int)
    extent = extent_slices(scene.mask, MONTAGE)
    crop = extent_crop(scene.mask, spacing) if extent else (0, shape[0] - 1, 0, shape[1] - 1)
    thumb_mm = ((crop[1] - crop[0] + 1) * spacing[0], (crop[3] - crop[2] + 1) * spacing[1])
    sizes_mm = [(shape[v.cols] * spacing[v.cols], shape[v.rows] * spacing[v.rows]) for v in VIEWS]
    height, panels, thumbs = plan(sizes_mm, len(extent), thumb_mm)
    fig = Figure(figsize=(WIDTH_IN, height), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    for view, box in zip(VIEWS, panels):
        scene.draw(fig, box, height, view, int(centre[view.normal]), view.name + " ")
    for z, box in zip(extent, thumbs):
        scene.draw(fig, box, height, VIEWS[0], z, "", crop=crop)
    if thumbs:
        fig.text(PAD_IN / WIDTH_IN, 1 - (thumbs[0][1] - 1.5 * LABEL_IN) / height, "the mask's extent: axial slices "
                 "from inferior to superior, zoomed to the mask", ha="left", va="center", fontsize=12)

    fig.text(PAD_IN / WIDTH_IN, 1 - 0.12 / height, _title(volume, scene, objects, modality, name),
             ha="left", va="top", fontsize=12, linespacing=1.5)
    handles = [Line2D([], [], color=scene.colour[v], lw=2, label=f"label {v}" if len(scene.values) > 1
                      else "mask outline") for v in scene.values[:MAX_LISTED]]
    if any((o.labels == 1).any() for o in objects):
        handles.append(Line2D([], [], color=POSITIVE, marker="+", ls="", ms=10, mew=2, label="positive click"))
    if any((o.labels == 0).any() for o in objects):
        handles.append(Line2D([], [], color=NEGATIVE, marker="x", ls="", ms=8, mew=2, label="negative click"))
    if any(o.box is not None for o in objects):
        handles.append(Line2D([], [], color=POSITIVE, ls="--", lw=1.5, label="box"))
    if handles:  # one row, right-aligned on the title's second line (the first can be long)
        fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(1 - PAD_IN / WIDTH_IN, 1 - 0.33 / height),
                   ncol=len(handles), fontsize=10, frameon=False, handlelength=1.5, columnspacing=1.2)
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return path


class _Scene:
    """The volume, its label map and prompts, reoriented for display once; draws one plane into a figure."""

    def __init__(self, volume: Volume, labels: np.ndarray, objects: Sequence[Prompts], modality: str) -> None:
        self.orient = Canonical.of(volume)
        self.image, self.mask = self.orient.array(volume.array), self.orient.array(labels)  # (X, Y, Z) views
        self.spacing = volume.spacing[list(self.orient.perm)]  # mm along x, y, z
        self.objects = objects
        self.window = display_window(volume.array, modality)
        # voxels per label value (bincount: np.unique would sort a 512x512x300 map for seconds)
        self.counts = np.bincount(np.ravel(labels, order="K").astype(np.uint8, copy=False), minlength=1)
        self.values = [int(v) for v in np.flatnonzero(self.counts[1:]) + 1]  # label values present, in order
        self.colour = {v: COLOURS[n % len(COLOURS)] for n, v in enumerate(self.values)}

    def draw(self, fig, box, fig_height: float, view: View, index: int, prefix: str, crop=None) -> None:
        """One plane ``index`` along the view's normal into ``box`` (left, top, width, height inches); ``crop``
        (col0, col1, row0, row1), inclusive, shows part of it (the extent slices, smaller)."""
        from matplotlib.patheffects import withStroke

        left, top, width, height = box
        ax = fig.add_axes((left / WIDTH_IN, 1 - (top + height) / fig_height, width / WIDTH_IN, height / fig_height))
        ax.imshow(plane(view, self.image, index), cmap="gray", vmin=self.window[0], vmax=self.window[1],
                  aspect=self.spacing[view.rows] / self.spacing[view.cols])  # pixel h / w
        cut = plane(view, self.mask, index)
        n_rows, n_cols = cut.shape
        small = crop is not None
        for v in self.values:
            inside = np.pad(cut == v, 1).astype(np.float32)  # padded so an outline touching the border closes
            if inside.any():
                ax.contour(np.arange(-1, n_cols + 1), np.arange(-1, n_rows + 1), inside, levels=[0.5],
                           colors=[self.colour[v]], linewidths=1.2 if small else 1.6)
        for prompts in self.objects:
            _draw_prompts(ax, view, self.orient, prompts, index, self.image.shape, small)
        col0, col1, row0, row1 = crop if small else (0, n_cols - 1, 0, n_rows - 1)
        ax.set_xlim(col0 - 0.5, col1 + 0.5)
        ax.set_ylim(row1 + 0.5, row0 - 0.5)
        ax.set_xticks([])
        ax.set_yticks([])
        axis = self.orient.perm[view.normal]  # the file's index axis this plane cuts
        file_index = self.image.shape[view.normal] - 1 - index if self.orient.flip[view.normal] else index
        ax.set_title(f"{prefix}{'ijk'[axis]}={file_index}", fontsize=10 if small else 12, pad=3)
        stroke = [withStroke(linewidth=2.5, foreground="black")]
        for text, x, y, ha, va in zip(view.letters, (0.015, 0.985, 0.5, 0.5), (0.5, 0.5, 0.985, 0.015),
                                      ("left", "right", "center", "center"), ("center", "center", "top", "bottom")):
            ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, color="white", fontweight="bold",
                    fontsize=9 if small else 12, path_effects=stroke)


def _draw_prompts(ax, view: View, orient: Canonical, prompts: Prompts, index: int, shape, small: bool) -> None:
    """Clicks within one slice of the plane as markers; the box as a rectangle where it crosses the plane."""
    from matplotlib.patches import Rectangle

    for point, label in zip(orient.point(prompts.points).reshape(-1, 3), prompts.labels):
        if abs(point[view.normal] - index) <= 1.0:
            col, row = to_display(view, point, shape)
            style = dict(marker="+", ms=16, color=POSITIVE) if label == 1 else dict(marker="x", ms=12, color=NEGATIVE)
            style["ms"] *= 0.6 if small else 1.0
            ax.plot([col], [row], ls="", mew=2.5, zorder=5, **style)
    if prompts.box is not None:
        corners = orient.point(prompts.box)  # (2, 3): flips may swap min and max, so sort again
        lo, hi = corners.min(0), corners.max(0)
        if lo[view.normal] - 0.5 <= index <= hi[view.normal] + 0.5:
            cols, rows = to_display(view, np.stack([lo, hi]), shape)
            ax.add_patch(Rectangle((cols.min(), rows.min()), np.ptp(cols), np.ptp(rows), fill=False,
                                   edgecolor=POSITIVE, lw=1.5, ls="--", zorder=4))


def _title(volume: Volume, scene: _Scene, objects: Sequence[Prompts], modality: str, name: str) -> str:
    """Two lines: file, mask volume(s), the click in voxels and mm; the grey-level window."""
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    values, window = scene.values, scene.window
    sizes = [f"{scene.counts[v] * voxel_ml:.1f} ml" for v in values]
    if not values:
        mask = "mask empty"
    elif len(values) == 1:
        mask = f"mask {sizes[0]}"
    elif len(values) <= MAX_LISTED:
        mask = "labels " + ", ".join(f"{v}: {s}" for v, s in zip(values, sizes))
    else:
        mask = f"{len(values)} labels, {sum(scene.counts[1:]) * voxel_ml:.1f} ml in all"
    first = objects[0] if objects else None
    if first is not None and (first.labels == 1).any():
        p = first.points[np.argmax(first.labels == 1)]
        ras = volume.ijk_to_ras(p)
        click = (f"click ijk ({', '.join(f'{v:g}' for v in np.round(p, 1))}) = RAS "
                 f"({', '.join(f'{v:.1f}' for v in ras)}) mm")
    elif first is not None and first.box is not None:
        click = "box centre"
    else:
        click = "centred on the mask"
    shown = (f"CT soft-tissue window W {CT_WINDOW[1]:g} L {CT_WINDOW[0]:g}" if modality == "ct" else
             f"MR {MR_PERCENTILES[0]:g}-{MR_PERCENTILES[1]:g}th percentiles ({window[0]:.4g} to {window[1]:.4g})")
    extra = "   (oblique scan: shown on the nearest orthogonal planes)" if scene.orient.oblique else ""
    return f"{name}   {mask}   {click}\n{shown}{extra}"
