#!/usr/bin/env python
"""Per-click Dice of a model on whole training structures, to see how a model grows a mask click by click.

    python experiments/probe_clicks.py MODEL.yaml CHECKPOINT.pt [--cache runs/default2/cache/<fingerprint>]
                                   [--case ts_ct] [--labels 5,1] [--clicks 5]

For each label: a 128^3 crop centred on the structure (the training pipeline's preprocessed case and crop), then
the clicks of the evaluation protocol (``evaluation.protocol``: deepest point first, then the largest error
region), previous logits fed back. Prints the Dice and the marked voxels after each click,
and how well the stem features' similarity to the clicked voxel separates the structure (models with a stem).
This is the probe behind docs/experiments/README.md ("the first click gives a blob").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsam3d.evaluation.metrics import dice
from medsam3d.evaluation.protocol import deepest_point, next_click
from medsam3d.models import build_model
from medsam3d.models.guidance import similarity_maps
from medsam3d.training.data import Structure
from medsam3d.training.dataset import CropDataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model YAML (a training run's model.yaml)")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--cache", type=Path, help="a training run's preprocessed cache folder (holds cases.json)")
    parser.add_argument("--case", default="ts_ct")
    parser.add_argument("--labels", default="5,1", help="label values to probe (ts_ct: 5 liver, 1 spleen)")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = args.cache or next(Path("runs").glob("*/cache/*/cases.json")).parent
    records = json.loads((cache / "cases.json").read_text())
    case = next(i for i, r in enumerate(records) if r["case_id"] == args.case)
    label_map = np.load(cache / records[case]["file"])["label"]
    model = build_model(args.model, checkpoint=args.checkpoint)
    for value in (int(v) for v in args.labels.split(",")):
        where = np.argwhere(label_map == value)
        if not len(where):
            print(f"label {value}: not in {args.case}")
            continue
        structure = Structure(case, value, len(where), tuple(int(v) for v in where.mean(0).round()),
                              (tuple(where.min(0)), tuple(where.max(0))))
        item = CropDataset(records, cache, [structure], model.config.img_size, 0, fixed=True)[(0, 0)]
        target = item["target"][0].numpy() > 0.5
        points = torch.tensor(deepest_point(target)[None, None], dtype=torch.float32)
        labels = torch.tensor([[1]])
        with torch.no_grad():
            features = model.encode(item["image"][None])
            line = f"label {value} ({int(target.sum())} voxels in the crop)"
            if features.skips:
                sim = similarity_maps(features.skips[-1], points, labels, 1, model.config.img_size)[0, 0]
                low = F.avg_pool3d(item["target"][None], model.config.img_size // sim.shape[-1])[0, 0] > 0.5
                line += (f": feature similarity to the click {sim[low].mean():.2f} inside, {sim[~low].mean():.2f}"
                         f" outside, {(sim[~low] > 0.8).float().mean():.0%} of outside > 0.8")
            print(line)
            previous = None
            for k in range(1, args.clicks + 1):
                # as Segmenter answers: a lone click, or every click with multimask_refine
                multimask = (k == 1 and model.config.first_click_multimask) or model.config.multimask_refine
                low_res, iou = model.decode(features, points=points, labels=labels, mask_input=previous,
                                            multimask_output=multimask)
                best = int(iou[0].argmax())
                low_res = low_res[:, best:best + 1]
                pred = F.interpolate(low_res, size=target.shape, mode="trilinear")[0, 0].numpy() > 0
                print(f"  click {k}: Dice {dice(pred, target):.3f}, {int(pred.sum())} voxels marked")
                click = next_click(pred, target)
                if click is None:
                    break
                voxel, sign = click
                points = torch.cat([points, torch.tensor(voxel[None, None], dtype=torch.float32)], 1)
                labels = torch.cat([labels, torch.tensor([[sign]])], 1)
                previous = low_res


if __name__ == "__main__":
    main()
