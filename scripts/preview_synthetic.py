#!/usr/bin/env python
"""Look at synthetic training volumes: a grid of samples, the middle axial slice of each, every click target
outlined in its own colour (CT shown at a soft-tissue window, MR at its 0.5-99.5 percentiles).

    python scripts/preview_synthetic.py [--n 16] [--seed 0]
        -> docs/synthetic_samples.png (top half anatomy, bottom half procedural), _ct.png and _mr.png

The shape bank comes from the public training data (scripts/fetch_public_data.sh), held-out cases excluded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from medsam3d.training.synth import SynthConfig, compose  # noqa: E402
from medsam3d.training.synth.bank import bank_from_roots  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROOTS = [REPO / "data" / "public" / d for d in ("Dataset201_TotalSegCT", "Dataset202_TotalSegMR",
                                                "Dataset203_BrainMR", "Dataset204_LesionCT",
                                                "Dataset205_LesionMR", "Dataset206_ChestCT")]


def panel(ax, sample, title: str) -> None:
    k = sample.image.shape[2] // 2
    img = sample.image[:, :, k].T  # rows: y (posterior -> anterior, drawn bottom-up), columns: x
    if sample.modality == "ct":
        shown = np.clip((img + 250) / 600, 0, 1)  # window 50 +- 300 HU
    else:
        lo, hi = np.percentile(sample.image, (0.5, 99.5))
        shown = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(shown[..., None], 3, axis=2)
    lab = sample.label[:, :, k].T.astype(int)
    lab = np.where(np.isin(lab, sample.targets), lab, 0)
    colours = plt.get_cmap("tab20")((np.arange(lab.max() + 1) * 7) % 20)[:, :3]
    edge = find_boundaries(lab, mode="inner") & (lab > 0)
    rgb[edge] = colours[lab[edge]]
    ax.imshow(rgb, origin="lower", interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def grid(samples: list, titles: list[str], path: Path, columns: int = 4) -> None:
    rows = int(np.ceil(len(samples) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.6, rows * 2.75))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, sample, title in zip(np.ravel(axes), samples, titles):
        panel(ax, sample, title)
    fig.tight_layout(pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=str(REPO / "data" / "cache" / "preprocessed"))
    parser.add_argument("--out", default=str(REPO / "docs" / "synthetic_samples.png"))
    args = parser.parse_args()
    bank = bank_from_roots(ROOTS, args.cache)
    out = Path(args.out)
    half = args.n // 2
    mixed = [("anatomy", i) for i in range(half)] + [("procedural", i) for i in range(args.n - half)]
    for suffix, ct_prob in (("", 0.5), ("_ct", 1.0), ("_mr", 0.0)):
        samples, titles = [], []
        for kind, i in mixed:
            sample = compose(i, SynthConfig(kind=kind, seed=args.seed, ct_prob=ct_prob, bank=bank))
            samples.append(sample)
            titles.append(f"{kind} #{i} {sample.modality.upper()}, {len(sample.targets)} targets")
        grid(samples, titles, out.with_name(out.stem + suffix + out.suffix))


if __name__ == "__main__":
    main()
