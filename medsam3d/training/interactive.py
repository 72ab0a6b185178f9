"""SAM-style interactive training step: several simulated clicks per sample, previous logits fed back.

``InteractiveStep`` is an ``nn.Module`` whose forward is the whole step (encode once, then decode once per
click), so DistributedDataParallel wraps one forward and synchronises gradients as usual.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from .clicks import boxes_of, error_clicks, first_clicks
from .config import FOLLOW_CHOICES


class Prompts(NamedTuple):
    """The prompts of a sample so far, at full resolution (S^3 voxel coordinates)."""

    points: Optional[torch.Tensor]  # (B, N, 3); None while a box is the only prompt
    labels: Optional[torch.Tensor]  # (B, N): 1 inside, 0 outside
    boxes: Optional[torch.Tensor]  # (B, 6): lo xyz, hi xyz; None without a box

    def plus(self, points: torch.Tensor, labels: torch.Tensor) -> "Prompts":
        """With one more click per sample: points (B, 1, 3), labels (B, 1)."""
        if self.points is None:
            return self._replace(points=points, labels=labels)
        return self._replace(points=torch.cat([self.points, points], 1), labels=torch.cat([self.labels, labels], 1))


class Decoded(NamedTuple):
    """One decode of a prompt set, measured against the target on the loss grid (s = S / loss_downsample)."""

    low_res: torch.Tensor  # (B, M, L, L, L) logits at the decoder's resolution (M: 1, or the multimask outputs)
    iou_pred: torch.Tensor  # (B, M) the IoU head's score of each mask
    masks: torch.Tensor  # (B, M, s, s, s) bool, detached
    losses: torch.Tensor  # (B, M) Dice + BCE of each mask
    inter: torch.Tensor  # (B, M) voxels each mask shares with the target
    iou_true: torch.Tensor  # (B, M) each mask's IoU with the target
    best: torch.Tensor  # (B,) the lowest-loss mask: the one the loss is on


class InteractiveStep(nn.Module):
    """``loss_downsample`` d > 1 computes the loss and places the simulated clicks on an (S/d)^3 grid (soft
    targets by averaging), which is most of a CPU training step's cost at d = 1; clicks are mapped back to a
    random voxel of their d^3 cell at full resolution."""

    def __init__(self, model: nn.Module, clicks: int, box_prob: float = 0.0, loss_downsample: int = 1,
                 central_prob: float = 0.0, rank_weight: float = 0.0, rank_temperature: float = 0.05,
                 loss_clicks: Optional[int] = None, follow: str = "best") -> None:
        super().__init__()
        # which of a multimask decode's masks the next click is simulated on and gets back as its mask prompt:
        # "best" the lowest-loss one (the one the loss is on), "predicted" the IoU head's pick, as Segmenter does,
        # so training also meets the states a wrong pick leads to
        if follow not in FOLLOW_CHOICES:
            raise ValueError(f"follow must be one of {FOLLOW_CHOICES}, not {follow!r}")
        self.follow = follow
        self.model = model
        # as many clicks as the protocol gives (10): beyond the clicks it was trained on, a decoder's answers
        # collapse. All are decoded; only ``loss_clicks`` of them carry the loss, so back-propagation need not go
        # through every one
        self.clicks = clicks
        self.loss_clicks = clicks if not loss_clicks else max(1, min(int(loss_clicks), clicks))
        self.box_prob = box_prob if model.config.box_prompts else 0.0
        self.down = max(int(loss_downsample), 1)
        self.central_prob = central_prob
        # a multimask decode (model.multimask_for) puts the loss on the best of its M masks and teaches the IoU head
        # to rank them. MSE alone can learn a prior ("mask 1 is best") instead of a ranking; the listwise term
        # (ListNet: cross-entropy between the softmaxes of predicted and true IoUs over the M masks) pushes the
        # order, and its minimum is still exact calibration (predicted = true), so the two terms agree
        self.rank_weight = float(rank_weight)
        self.rank_temperature = float(rank_temperature)
        self.dice = DiceLoss(sigmoid=True, reduction="none")

    def forward(self, images: torch.Tensor, targets: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict]:
        """images, targets (B, 1, S, S, S) -> mean loss over the clicks that carry it, and metrics: dice after the
        last click (of the mask with the highest predicted IoU) and rank_acc, the share of multimask decodes where
        the IoU head picked the truly best mask (nan without multimask)."""
        gen = torch.Generator().manual_seed(int(seed))  # every random choice of the step, in a fixed order
        soft, hard = self._loss_targets(targets)
        embedding = self.model.encode(images)
        prompts = self._first_prompts(targets, hard, gen)
        trained = self._loss_carrying_clicks(gen)
        rows = torch.arange(images.shape[0], device=images.device)
        total, ranked, previous = images.new_zeros(()), [], None
        for click in range(self.clicks):
            multimask = self.model.multimask_for(lone_click=click == 0 and prompts.boxes is None)
            with nullcontext() if click in trained else torch.no_grad():
                out = self._decode(embedding, prompts, previous, multimask, soft, hard)
            if click in trained:
                total = self._add_loss(total, out, rows)
            if out.losses.shape[1] > 1:
                ranked.append((out.iou_pred.detach().argmax(1) == out.iou_true.argmax(1)).float())  # (B,)
            kept = self._followed(out)
            previous = out.low_res[rows, kept][:, None].detach()  # (B, 1, L, L, L): the next mask prompt
            if click + 1 < self.clicks:
                prompts = self._error_click(prompts, out.masks[rows, kept][:, None], hard, gen)
        return total / self.loss_clicks, self._metrics(out, hard, ranked, rows)

    # ------------------------------------------------------------------ choices
    def _first_prompts(self, targets: torch.Tensor, hard: torch.Tensor, gen: torch.Generator) -> Prompts:
        """A box (with chance ``box_prob``, models that take boxes) or one click inside each target."""
        if self.box_prob > 0 and float(torch.rand(1, generator=gen)) < self.box_prob:
            return Prompts(None, None, boxes_of(targets, gen))
        points, labels = first_clicks(hard.float(), gen, self.central_prob)
        return Prompts(self._to_full(points, gen), labels, None)

    def _loss_carrying_clicks(self, gen: torch.Generator) -> set[int]:
        """The first click and a random draw of ``loss_clicks - 1`` others (every click without loss_clicks)."""
        if self.loss_clicks >= self.clicks:
            return set(range(self.clicks))
        others = torch.randperm(self.clicks - 1, generator=gen)[: self.loss_clicks - 1] + 1
        return {0, *others.tolist()}

    def _followed(self, out: Decoded) -> torch.Tensor:
        """(B,) the mask the next click is placed on and fed back: the best one, or the IoU head's pick."""
        return out.iou_pred.detach().argmax(1) if self.follow == "predicted" else out.best

    def _error_click(self, prompts: Prompts, pred: torch.Tensor, hard: torch.Tensor,
                     gen: torch.Generator) -> Prompts:
        """The prompts plus one click on each sample's larger error; pred, hard (B, 1, s, s, s) on the loss grid."""
        points, labels = error_clicks(pred.float(), hard.float(), gen, self.central_prob)
        return prompts.plus(self._to_full(points, gen), labels)

    # ------------------------------------------------------------------ computation
    def _loss_targets(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """targets (B, 1, S, S, S) -> soft (B, 1, s, s, s) float and hard bool targets on the loss grid."""
        soft = F.avg_pool3d(targets, self.down) if self.down > 1 else targets
        return soft, soft > 0.5

    def _decode(self, embedding, prompts: Prompts, previous: Optional[torch.Tensor], multimask: bool,
                soft: torch.Tensor, hard: torch.Tensor) -> Decoded:
        low_res, iou_pred = self.model.decode(embedding, points=prompts.points, labels=prompts.labels,
                                              boxes=prompts.boxes, mask_input=previous, multimask_output=multimask)
        logits = F.interpolate(low_res, size=soft.shape[2:], mode="trilinear", align_corners=False)
        masks = (logits > 0).detach()
        inter = (masks & hard).flatten(2).sum(2).float()
        union = (masks | hard).flatten(2).sum(2).float().clamp(min=1)
        losses = self._mask_losses(logits, soft)
        return Decoded(low_res, iou_pred, masks, losses, inter, inter / union, losses.detach().argmin(1))

    def _add_loss(self, total: torch.Tensor, out: Decoded, rows: torch.Tensor) -> torch.Tensor:
        """``total`` plus one click's loss: its best mask's Dice + BCE, the IoU head's error on every mask, and on a
        multimask decode the ranking term (added one by one, in this order)."""
        total = total + out.losses[rows, out.best].mean() + F.mse_loss(out.iou_pred, out.iou_true)
        if out.losses.shape[1] > 1 and self.rank_weight > 0:
            total = total + self.rank_weight * self._rank_loss(out.iou_pred, out.iou_true)
        return total

    def _metrics(self, out: Decoded, hard: torch.Tensor, ranked: list[torch.Tensor],
                 rows: torch.Tensor) -> dict[str, float]:
        """Dice of the last decode's mask that inference keeps (highest predicted IoU), and rank_acc."""
        shown = out.iou_pred.detach().argmax(1)  # (B,)
        sizes = out.masks[rows, shown].flatten(1).sum(1) + hard.flatten(1).sum(1)
        dice = 2 * out.inter[rows, shown] / sizes.float().clamp(min=1)
        rank_acc = float(torch.cat(ranked).mean()) if ranked else float("nan")
        return {"dice": float(dice.mean()), "rank_acc": rank_acc}

    def _rank_loss(self, iou_pred: torch.Tensor, iou_true: torch.Tensor) -> torch.Tensor:
        """iou_pred, iou_true (B, M) -> listwise ranking loss (scalar), zero at iou_pred == iou_true."""
        t = self.rank_temperature
        return F.kl_div(torch.log_softmax(iou_pred / t, dim=1), torch.log_softmax(iou_true / t, dim=1),
                        reduction="batchmean", log_target=True)  # KL(true || predicted), summed over M

    def _mask_losses(self, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """logits (B, M, s, s, s), soft targets (B, 1, s, s, s) -> Dice + BCE per sample and mask, (B, M)."""
        target = soft.expand_as(logits)
        dice = self.dice(logits, target).flatten(1)  # (B, M)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(2)
        return dice + bce

    def _to_full(self, points: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """points (B, N, 3) on the loss grid -> a random voxel of each one's d^3 cell at full resolution."""
        if self.down == 1:
            return points
        offset = torch.randint(0, self.down, points.shape, generator=gen).to(points)
        return points * self.down + offset
