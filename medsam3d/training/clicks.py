"""Simulated clicks for training: the first inside the target, the next ones on the larger error.

Each click is either a uniformly random voxel of its region, or (with probability ``central_prob``) the click the
evaluation protocol and most users make: the deepest point of the target, then the deepest point of the largest
connected error region (``evaluation.protocol``). Training on both keeps the model robust to off-centre clicks
while it sees the clicks it is evaluated with.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..evaluation.protocol import deepest_point, next_click


def _central(gen: torch.Generator, central_prob: float) -> bool:
    return central_prob > 0 and float(torch.rand(1, generator=gen)) < central_prob


def _random_voxel(mask: torch.Tensor, gen: torch.Generator) -> Optional[torch.Tensor]:
    """A uniformly random voxel of a (X, Y, Z) bool mask, as float (3,), or None if empty."""
    where = torch.nonzero(mask)
    if len(where) == 0:
        return None
    return where[torch.randint(len(where), (1,), generator=gen)][0].float()


def first_clicks(targets: torch.Tensor, gen: torch.Generator,
                 central_prob: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """targets (B, 1, X, Y, Z) -> points (B, 1, 3), labels (B, 1): one positive click inside each target."""
    points, labels = [], []
    for t in targets[:, 0] > 0.5:
        if _central(gen, central_prob) and bool(t.any()):
            p = torch.from_numpy(deepest_point(t.cpu().numpy()).astype(np.float32))
        else:
            p = _random_voxel(t, gen)
        if p is None:  # no target in the crop: a negative click at the centre
            points.append(torch.tensor([s / 2 for s in t.shape]))
            labels.append(0)
        else:
            points.append(p)
            labels.append(1)
    return torch.stack(points)[:, None].to(targets.device), torch.tensor(labels, device=targets.device)[:, None]


def error_clicks(pred: torch.Tensor, targets: torch.Tensor, gen: torch.Generator,
                 central_prob: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per sample in its larger error: positive on missed target, negative on extra segmentation.

    pred, targets: (B, 1, X, Y, Z) bool/float -> points (B, 1, 3), labels (B, 1).
    """
    points, labels = [], []
    for p, t in zip(pred[:, 0] > 0.5, targets[:, 0] > 0.5):
        if _central(gen, central_prob):
            found = next_click(p.cpu().numpy(), t.cpu().numpy())
            if found is not None:
                points.append(torch.from_numpy(found[0].astype(np.float32)))
                labels.append(int(found[1]))
                continue
        missed, extra = t & ~p, p & ~t
        use_missed = bool(missed.sum() >= extra.sum())
        click = _random_voxel(missed if use_missed else extra, gen)
        if click is None:  # perfect already: confirm with another positive click
            click, use_missed = _random_voxel(t, gen), True
            if click is None:
                click, use_missed = torch.tensor([s / 2 for s in t.shape]), False
        points.append(click)
        labels.append(1 if use_missed else 0)
    return torch.stack(points)[:, None].to(targets.device), torch.tensor(labels, device=targets.device)[:, None]


def boxes_of(targets: torch.Tensor, gen: torch.Generator, jitter: int = 3) -> torch.Tensor:
    """(B, 1, X, Y, Z) -> (B, 6) bounding boxes with a little random slack, clipped to the crop."""
    size = targets.shape[-1]
    out = []
    for t in targets[:, 0] > 0.5:
        where = torch.nonzero(t)
        if len(where) == 0:
            lo, hi = torch.zeros(3), torch.full((3,), size - 1.0)
        else:
            lo, hi = where.min(0).values.float(), where.max(0).values.float()
        slack = torch.randint(0, jitter + 1, (6,), generator=gen).float()
        out.append(torch.cat([(lo - slack[:3]).clamp(0, size - 1), (hi + slack[3:]).clamp(0, size - 1)]))
    return torch.stack(out).to(targets.device)
