"""How much Dice a model's output grid can give at best: the ground truth itself, put through the grid.

For every target of the chosen cases, as ``medsam3d evaluate`` picks them (each label value's largest connected
part, >= --min-ml): a window centred on the target's deepest point (the evaluation's first click), the label
resampled into it as a fraction-covered map, turned into logits
(+-10), averaged down to the output grid (32^3 = S/4 for SAM-Med3D's decoder, 64^3 = S/2 with
``fine_output``), brought back up and onto the scan's own grid exactly as ``Segmenter`` does, and thresholded at 0.
Dice against the label inside the window's footprint. No model is involved: this is what the grid allows, not what
a model achieves. An average is not the best low-res answer (a model can do better, as its 10-click Dice on the
pancreas shows), so ``--fit`` also fits the low-res logits to the label by gradient descent through the same
upsampling (Adam, soft Dice + BCE in the window): the best any model with that output grid could give.

    python experiments/probe_output_ceiling.py data/public/Dataset201_TotalSegCT --cases ts_ct_dicom
    python experiments/probe_output_ceiling.py data/public/Dataset201_TotalSegCT --cases ts_ct_dicom --labels 7 --fit
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsam3d.datasets import discover
from medsam3d.evaluation.protocol import deepest_point, targets_from_labels
from medsam3d.io import read_volume
from medsam3d.preprocess import Window, mask_to_window, paste_back

GRIDS = (32, 64, 128)


def fitted(target: torch.Tensor, grid: int, steps: int = 150) -> torch.Tensor:
    """(S, S, S) fraction map -> (1, 1, grid, grid, grid) logits whose upsampling best matches it."""
    size = target.shape[-1]
    low = F.adaptive_avg_pool3d(((target - 0.5) * 20.0)[None, None], (grid,) * 3).clone().requires_grad_(True)
    optimiser = torch.optim.Adam([low], lr=0.5)
    for _ in range(steps):
        full = F.interpolate(low, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0]
        prob = torch.sigmoid(full)
        soft_dice = 1 - 2 * (prob * target).sum() / (prob.sum() + target.sum()).clamp(min=1e-6)
        loss = soft_dice + F.binary_cross_entropy_with_logits(full, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return low.detach()


def ceiling(mask: np.ndarray, volume, grids=GRIDS, fit: bool = False) -> list[float]:
    """Dice of ``mask`` (bool, on ``volume``'s grid) after passing through each output grid, in ``grids`` order."""
    center = volume.ijk_to_lps(deepest_point(mask, volume.spacing).astype(np.float64))
    window = Window(tuple(float(c) for c in np.round(center / Window.spacing) * Window.spacing))
    fraction = torch.from_numpy(mask_to_window(mask, volume, window))  # (S, S, S) in [0, 1]
    scores = []
    for grid in grids:
        if fit:
            low = fitted(fraction, grid)
        else:
            low = F.adaptive_avg_pool3d(((fraction - 0.5) * 20.0)[None, None], (grid,) * 3)
        full = F.interpolate(low, size=(window.size,) * 3, mode="trilinear", align_corners=False)[0, 0].numpy()
        box, pasted = paste_back(full, window, volume)
        predicted = pasted > 0
        truth = mask[box]
        scores.append(float(2 * (predicted & truth).sum() / max(int(predicted.sum() + truth.sum()), 1)))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="nnU-Net-layout folder (imagesTr, labelsTr)")
    parser.add_argument("--cases", required=True, help="comma-separated case ids")
    parser.add_argument("--labels", help="comma-separated label values (default: all)")
    parser.add_argument("--min-ml", type=float, default=1.0, help="smallest structure scored (the evaluation's)")
    parser.add_argument("--fit", action="store_true", help="fit the low-res logits (the true ceiling) instead "
                        "of averaging the label down (slower: 150 Adam steps per structure and grid)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    grids = GRIDS[:2] if args.fit else GRIDS  # a fitted 128^3 is the label itself
    wanted = {c.strip() for c in args.cases.split(",")}
    values = [int(v) for v in args.labels.split(",")] if args.labels else None
    rows = []
    for case in (c for c in discover(args.dataset) if c.case_id in wanted):
        image, labels = read_volume(case.image), read_volume(case.label)
        chosen = labels.array if values is None else np.where(np.isin(labels.array, values), labels.array, 0)
        for target in targets_from_labels(chosen, image.spacing, {}, args.min_ml):
            ml = float(target.mask.sum() * np.prod(image.spacing)) / 1000.0
            scores = ceiling(target.mask, image, grids, args.fit)
            rows.append({"case": case.case_id, "label": target.value, "ml": round(ml, 2),
                         **{f"dice_{g}": round(s, 4) for g, s in zip(grids, scores)}})
            print(f"{case.case_id} label {target.value:4d} {ml:8.1f} ml  "
                  + "  ".join(f"{g}^3 {s:.3f}" for g, s in zip(grids, scores)), flush=True)
    means = {g: float(np.mean([r[f"dice_{g}"] for r in rows])) for g in grids}
    print(f"mean over {len(rows)} structures: " + "  ".join(f"{g}^3 {m:.3f}" for g, m in means.items()))
    if args.json:
        args.json.write_text(json.dumps({"fit": args.fit, "structures": rows, "mean": means}, indent=1))


if __name__ == "__main__":
    main()
