#!/usr/bin/env python
"""Draw the pseudo-masks (medsam3d.training.pseudo) of real CT and MR scans: docs/pseudo_masks.png.

    python scripts/preview_pseudo.py [--out docs/pseudo_masks.png] [--cases ts_ct,icbm152,...] [--set key=value]

Each row is one case of data/public (built by scripts/fetch_public_data.sh) in model space (RAS+, 1.5 mm): an axial
slice through the middle of the body at three merge levels of the finest scale, then a coronal slice at the middle
level, with every pseudo-mask that crosses the slice outlined in its own colour (the masks of one scale and level
are disjoint). CT in a soft-tissue window (W 400 L 40), MR in its 1st-99th percentiles; radiological orientation
(the patient's right on the left). Prints the masks' count and the time each case took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import yaml  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from medsam3d.training.data import to_model_space  # noqa: E402
from medsam3d.training.pseudo import PseudoSettings, body_mask, features, pseudo_masks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PUBLIC = REPO / "data" / "public"
# training cases only (held-out ones are never shown a pseudo-mask): CT first, then MR
DEFAULT_CASES = ("ts_ct", "slicer_ctchest4", "invesalius_head_ct", "tptbox_mr", "icbm152", "robex_atlas",
                 "pydeface_mean_head", "ts_mr_sm")


def model_space_image(case: str) -> tuple[np.ndarray, str]:
    """A case of data/public (labelled or Unlabelled) -> (image [x, y, z] at 1.5 mm RAS+, modality)."""
    manifest = json.loads((PUBLIC / "manifest.json").read_text())
    entry = next((e for e in manifest["cases"] + manifest.get("unlabelled", []) if e["case_id"] == case), None)
    if entry is None:
        sys.exit(f"{case}: not in data/public/manifest.json")
    if entry["heldout"]:
        sys.exit(f"{case} is held out: no pseudo-masks for it")
    image = sitk.ReadImage(str(PUBLIC / entry["dataset"] / "imagesTr" / f"{case}_0000.nii.gz"), sitk.sitkFloat32)
    fill = float(sitk.GetArrayViewFromImage(image).min())
    return to_model_space(image, 1.5, sitk.sitkLinear, fill, sitk.sitkFloat32), entry["modality"]


def window(image: np.ndarray, modality: str) -> tuple[float, float]:
    if modality == "CT":
        return -160.0, 240.0
    fg = image[image > image.min()]
    return tuple(np.percentile(fg, [1, 99])) if fg.size else (0.0, 1.0)


def outline(ax, image2d: np.ndarray, labels2d: np.ndarray, vmin: float, vmax: float, title: str) -> None:
    """Axes ``ax``: a slice [x, y] (radiological: x flipped) with each label's boundary in a colour."""
    ax.imshow(image2d.T, cmap="gray", vmin=vmin, vmax=vmax, origin="lower")
    edges = find_boundaries(labels2d, mode="inner")
    colours = plt.get_cmap("tab20")((labels2d % 20) / 19.0)
    overlay = np.zeros(labels2d.shape + (4,))
    overlay[edges] = colours[edges]
    overlay[edges, 3] = 1.0
    ax.imshow(overlay.transpose(1, 0, 2), origin="lower", interpolation="nearest")
    ax.invert_xaxis()
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def label_slice(pm, keep: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The masks ``keep`` (disjoint) cut at ``index`` along ``axis`` -> 2D label map (mask k -> k + 1)."""
    shape = [s for a, s in enumerate(pm.case_shape) if a != axis]
    out = np.zeros(shape, np.int32)
    for k in np.nonzero(keep)[0]:
        lo, size = pm.lo[k], pm.shapes[k]
        if not lo[axis] <= index < lo[axis] + size[axis]:
            continue
        cut = np.take(pm.box(k), index - lo[axis], axis=axis)
        dst = tuple(slice(lo[a], lo[a] + size[a]) for a in range(3) if a != axis)
        out[dst][cut] = k + 1
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "pseudo_masks.png")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES))
    parser.add_argument("--set", action="append", default=[], help="a PseudoSettings field, e.g. levels=[0.05,0.1]")
    args = parser.parse_args(argv)
    settings = PseudoSettings.from_options({k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)})
    cases = [c for c in args.cases.split(",") if c]
    ordered = sorted(settings.levels)
    # three levels from the finest to the coarsest at which a region can still be stable
    levels = sorted({int(i) for i in np.linspace(0, len(ordered) - settings.persist, 3).round()})
    scale = settings.scales[0]
    cols = len(levels) + 1
    fig, axes = plt.subplots(len(cases), cols, figsize=(3.2 * cols, 3.2 * len(cases)), squeeze=False)
    for row, case in enumerate(cases):
        image, modality = model_space_image(case)
        start = time.perf_counter()
        pm = pseudo_masks(image, modality, settings)
        seconds = time.perf_counter() - start
        body = np.argwhere(body_mask(features(image, modality), modality))
        centre = ((body.min(0) + body.max(0)) // 2) if len(body) else np.array(image.shape) // 2
        vmin, vmax = window(image, modality)
        print(f"{case}: {modality} {image.shape}, {len(pm)} pseudo-masks "
              f"({', '.join(f'{(pm.level == i).sum()} from level {ordered[i]:g}' for i in range(len(ordered)))}), "
              f"{seconds:.1f} s", flush=True)
        for col, level in enumerate(levels):
            keep = (pm.level <= level) & (pm.scale == scale)
            # a region alive since a lower level is stored once, at its first level: take, at each level, the
            # newest mask of the partition for every voxel (masks of a later level contain the earlier ones)
            keep &= _alive_at(pm, keep, level)
            labels = label_slice(pm, keep, 2, int(centre[2]))
            outline(axes[row, col], image[:, :, int(centre[2])], labels, vmin, vmax,
                    f"{case} axial, level {ordered[level]:g}: {int(keep.sum())} masks")
        mid = levels[len(levels) // 2]
        keep = (pm.level <= mid) & (pm.scale == scale)
        keep &= _alive_at(pm, keep, mid)
        labels = label_slice(pm, keep, 1, int(centre[1]))
        outline(axes[row, -1], image[:, int(centre[1]), :], labels, vmin, vmax,
                f"coronal, level {ordered[mid]:g} ({seconds:.0f} s/case)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=70)
    print(f"wrote {args.out}")


def _alive_at(pm, keep: np.ndarray, level: int) -> np.ndarray:
    """Of the masks ``keep`` (one scale, levels <= ``level``), those not inside a mask of a later level (<= level):
    the partition's regions at ``level`` that passed the filters."""
    out = keep.copy()
    index = np.nonzero(keep)[0]
    for i in index:
        for j in index:
            if pm.level[j] > pm.level[i] and _contains(pm, j, i):
                out[i] = False
                break
    return out


def _contains(pm, outer: int, inner: int) -> bool:
    """Whether mask ``outer`` holds mask ``inner``'s centre voxel (merges only grow regions: enough to tell)."""
    c = pm.centers[inner] - pm.lo[outer]
    return bool(np.all(c >= 0) and np.all(c < pm.shapes[outer]) and pm.box(outer)[tuple(c)])


if __name__ == "__main__":
    main()
