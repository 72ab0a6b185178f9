#!/usr/bin/env python
"""Carry medsam3d-tiny weights trained with 3 guidance maps over to the 5-map decoder (feature similarity added).

    python experiments/widen_guidance.py OLD.pt NEW.pt

The default model's run started with 3 guidance channels (click heatmaps, previous mask) and was continued with
`medsam3d finetune` after the 2 similarity maps were added (docs/MODEL_CARD.md). This script is that step: every
weight is copied, and the first conv of the guidance path gets zero weights for the new channels, so the widened
model computes exactly what the old one did until fine-tuning moves them.
"""

from __future__ import annotations

import sys

import torch

from medsam3d.models.checkpoint import read_state_dict
from medsam3d.models.guidance import GUIDANCE_CHANNELS

KEY = "mask_decoder.skip_fusion.guidance_in.weight"


def main() -> None:
    source, target = sys.argv[1:3]
    state = dict(read_state_dict(source))
    old = state[KEY]  # (8, C_old, 1, 1, 1)
    if old.shape[1] < GUIDANCE_CHANNELS:
        extra = old.new_zeros(old.shape[0], GUIDANCE_CHANNELS - old.shape[1], *old.shape[2:])
        state[KEY] = torch.cat([old, extra], dim=1)
    torch.save({"model": state}, target)
    print(f"{KEY}: {tuple(old.shape)} -> {tuple(state[KEY].shape)}; wrote {target}")


if __name__ == "__main__":
    main()
