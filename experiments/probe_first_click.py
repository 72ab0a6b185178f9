#!/usr/bin/env python
"""How good is the first click's mask choice? For each held-out structure, one click at its deepest point, the
Dice of each of the 3 multimask outputs (forced), of the one the IoU head picks, and of the best (oracle).

    python experiments/probe_first_click.py MODEL_YAML CHECKPOINT [--dataset data/public/Dataset201_TotalSegCT]
        [--case ts_ct_dicom]

The gap between "picked" and "oracle" is what a better-calibrated IoU head would give at 1 click. The last line
lines give the spread across structures of the IoU head's scores and of the decoder's output tokens (IoU token,
then mask tokens 0-3), relative to their size: near zero means a head that scores every input alike, and tokens
that carry nothing to rank with (what `mask_iou_head` avoids).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from medsam3d.datasets import label_names
from medsam3d.evaluation.metrics import dice
from medsam3d.evaluation.protocol import deepest_point, targets_from_labels
from medsam3d.io import read_volume
from medsam3d.segmenter import Segmenter


class ForcedChoice:
    """Wraps a model so that a multimask decode reports IoU 1 for mask ``forced`` (None: the model's own)."""

    def __init__(self, model) -> None:
        self.model, self.forced = model, None
        self.scores: list[np.ndarray] = []  # the model's own IoU scores of each unforced multimask decode, (M,)
        self.tokens: list[torch.Tensor] = []  # the decoder's output tokens of those decodes, (T, C)
        self._hs: list[torch.Tensor] = []
        model.mask_decoder.transformer.register_forward_hook(lambda module, inputs, out: self._hs.append(out[0][0]))

    def __getattr__(self, name):  # config, name, low_res_size, ...: the wrapped model's
        return getattr(self.model, name)

    def encode(self, image):
        return self.model.encode(image)

    def decode(self, features, multimask_output=False, keep_best=False, **prompts):
        """All M masks, the scores replaced when forced (``keep_best`` is dropped: the Segmenter picks)."""
        self._hs.clear()
        low_res, iou = self.model.decode(features, multimask_output=multimask_output, **prompts)
        if multimask_output and self.forced is None:
            self.scores.append(iou[0].float().cpu().numpy())
            self.tokens.append(self._hs[-1][:1 + self.config.num_multimask_outputs + 1].float().cpu())
        if multimask_output and self.forced is not None:
            iou = torch.zeros_like(iou)
            iou[:, self.forced] = 1.0
        return low_res, iou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("checkpoint")
    parser.add_argument("--dataset", type=Path, default=Path("data/public/Dataset201_TotalSegCT"))
    parser.add_argument("--case", default="ts_ct_dicom")
    parser.add_argument("--min-ml", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    segmenter = Segmenter(model=args.model, checkpoint=args.checkpoint, threads=2)
    wrapped = ForcedChoice(segmenter.model)
    segmenter.model = wrapped
    volume = read_volume(args.dataset / "imagesTr" / f"{args.case}_0000.nii.gz")
    labels = read_volume(args.dataset / "labelsTr" / f"{args.case}.nii.gz").array
    names = label_names(args.dataset)
    segmenter.set_volume(volume)
    rows = []
    for target in targets_from_labels(labels, volume.spacing, names, args.min_ml):
        mask = target.mask
        click = deepest_point(mask, volume.spacing)
        scores = []
        for forced in (0, 1, 2, None):
            wrapped.forced = forced
            segmenter.forget_previous()
            scores.append(dice(segmenter.predict(points=[click.tolist()]).mask.array, mask))
        rows.append((target.name, int(mask.sum()), *scores))
        print(f"{target.name:32s} masks {scores[0]:.3f} {scores[1]:.3f} {scores[2]:.3f}  picked {scores[3]:.3f}  "
              f"oracle {max(scores[:3]):.3f}", flush=True)
    table = np.array([r[2:] for r in rows])
    print(f"mean over {len(rows)}: masks {table[:, 0].mean():.3f} {table[:, 1].mean():.3f} {table[:, 2].mean():.3f}"
          f"  picked {table[:, 3].mean():.3f}  oracle {table[:, :3].max(1).mean():.3f}")
    scores = np.array(wrapped.scores)
    print("IoU head scores across structures, mean (std) per mask: "
          + "  ".join(f"{m:.3f} ({s:.3f})" for m, s in zip(scores.mean(0), scores.std(0))))
    tokens = torch.stack(wrapped.tokens)  # (structures, T, C)
    spread = tokens.std(0).mean(1) / tokens.abs().mean((0, 2))
    print("decoder output tokens across structures, std / mean |x|: " + "  ".join(f"{v:.3f}" for v in spread))


if __name__ == "__main__":
    main()
