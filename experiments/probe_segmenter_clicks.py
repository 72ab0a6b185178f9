#!/usr/bin/env python
"""Click by click through ``Segmenter``, the evaluator's protocol on chosen structures of one scan, printing what
the mean Dice of ``medsam3d evaluate`` hides: voxels marked, the click's sign, windows used (and whether the
click moved the prediction to a new window), predicted IoU.

    python experiments/probe_segmenter_clicks.py MODEL.yaml CHECKPOINT.pt --labels 100,101,112 [--clicks 5]
        [--dataset data/public/Dataset201_TotalSegCT] [--case ts_ct_dicom] [--fresh]

Each structure runs through the evaluator's own ``run_protocol``; ``--fresh`` also empties the window cache
first, so that each structure is segmented as if it were the first of the scan (the evaluator's order reuses
windows). This is the probe behind docs/experiments/README.md, run (d).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from medsam3d.datasets import label_names
from medsam3d.evaluation.evaluate import run_protocol
from medsam3d.evaluation.methods import ModelMethod
from medsam3d.evaluation.protocol import targets_from_labels
from medsam3d.io import read_volume
from medsam3d.segmenter import Segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model YAML or name")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--dataset", type=Path, default=Path("data/public/Dataset201_TotalSegCT"))
    parser.add_argument("--case", default="ts_ct_dicom")
    parser.add_argument("--labels", required=True, help="comma-separated label values")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--fresh", action="store_true", help="empty the window cache before each structure")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = label_names(args.dataset)
    volume = read_volume(args.dataset / "imagesTr" / f"{args.case}_0000.nii.gz")
    label_map = read_volume(args.dataset / "labelsTr" / f"{args.case}.nii.gz").array
    seg = Segmenter(args.model, checkpoint=args.checkpoint)
    seg.set_volume(volume)
    method = _RecordingModel(seg, "model")
    for value in (int(v) for v in args.labels.split(",")):
        found = targets_from_labels(np.where(label_map == value, value, 0), volume.spacing, names, 0.0)
        if not found:
            print(f"label {value}: not in {args.case}")
            continue
        target = found[0].mask
        if args.fresh:
            seg.set_volume(volume)
        print(f"{names.get(value, value)} ({value}): {int(target.sum())} voxels")
        out = run_protocol(method, target, volume.spacing, list(range(1, args.clicks + 1)), tolerance_mm=2.0)
        previous_window = None
        for k, (result, click) in enumerate(zip(method.results, out["clicks"]), start=1):
            # a refinement that starts in another window than the last click did: its clicks left that window
            moved = " (new window)" if previous_window not in (None, result.windows[0]) else ""
            previous_window = result.windows[0]
            print(f"  click {k} ({'+' if click[3] else '-'}): {int(result.mask.array.sum())} voxels marked, "
                  f"Dice {out['dice'][str(k)]:.3f}, {len(result.windows)} window(s){moved}, "
                  f"predicted IoU {', '.join(f'{i:.2f}' for i in result.iou)}")


class _RecordingModel(ModelMethod):
    """The evaluator's model method, keeping every click's ``Segmenter`` result of the current target."""

    def start_target(self) -> None:
        super().start_target()
        self.results = []

    def predict(self, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        mask = super().predict(points, labels)
        self.results.append(self.last_result)
        return mask

if __name__ == "__main__":
    main()
