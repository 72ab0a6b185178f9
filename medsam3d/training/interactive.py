"""SAM-style interactive training step: several simulated clicks per sample, previous logits fed back.

``InteractiveStep`` is an ``nn.Module`` whose forward is the whole step (encode once, then decode once per
click), so DistributedDataParallel wraps one forward and synchronises gradients as usual.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from .clicks import boxes_of, error_clicks, first_clicks
from .config import FOLLOW_CHOICES


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
        self.clicks = clicks
        # the decoder must see as many clicks in training as the protocol gives it (10): beyond the clicks it was
        # trained on, the run (c) weights turned a spleen at Dice 0.78 into a speck. All are decoded; only
        # ``loss_clicks`` of them carry the loss, so back-propagation need not go through every one
        self.loss_clicks = clicks if not loss_clicks else max(1, min(int(loss_clicks), clicks))
        self.box_prob = box_prob if getattr(model.config, "box_prompts", False) else 0.0
        self.down = max(int(loss_downsample), 1)
        self.central_prob = central_prob
        # SAM's answer to a single click's ambiguity (a vertebra, or the spine?): decode all M masks, put the loss on
        # the best one only and teach the IoU head to rank them; inference keeps the highest predicted IoU
        self.multimask_first = bool(getattr(model.config, "first_click_multimask", False))
        # multimask_refine: every click is answered that way, as Segmenter then decodes every prompt set
        self.multimask_always = bool(getattr(model.config, "multimask_refine", False))
        # the IoU head's MSE alone learned a prior ("mask 1 is best") instead of a ranking; a listwise term
        # (ListNet: cross-entropy between the softmaxes of predicted and true IoUs over the M masks) pushes the
        # order, and its minimum is still exact calibration (predicted = true), so the two terms agree
        self.rank_weight = float(rank_weight)
        self.rank_temperature = float(rank_temperature)
        self.dice = DiceLoss(sigmoid=True, reduction="none")

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
        if self.down == 1:
            return points
        offset = torch.randint(0, self.down, points.shape, generator=gen).to(points)
        return points * self.down + offset

    def forward(self, images: torch.Tensor, targets: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict]:
        """images, targets (B, 1, S, S, S) -> mean loss over the clicks that carry it, and metrics: dice after the
        last click (of the mask with the highest predicted IoU) and rank_acc, the share of multimask decodes where
        the IoU head picked the truly best mask (nan without multimask)."""
        gen = torch.Generator().manual_seed(int(seed))
        size = images.shape[-1] // self.down
        soft = F.avg_pool3d(targets, self.down) if self.down > 1 else targets  # (B, 1, S/d, ..)
        hard = soft > 0.5
        embedding = self.model.encode(images)
        use_box = self.box_prob > 0 and float(torch.rand(1, generator=gen)) < self.box_prob
        boxes = boxes_of(targets, gen) if use_box else None
        points = labels = None
        if not use_box:
            points, labels = first_clicks(hard.float(), gen, self.central_prob)
            points = self._to_full(points, gen)
        previous = None
        total = images.new_zeros(())
        ranked: list[torch.Tensor] = []  # per multimask decode: did the head pick the truly best mask? (B,)
        trained = set(range(self.clicks))  # the clicks that carry the loss
        if self.loss_clicks < self.clicks:
            others = torch.randperm(self.clicks - 1, generator=gen)[: self.loss_clicks - 1] + 1
            trained = {0, *others.tolist()}
        for click in range(self.clicks):
            multimask = self.multimask_always or (self.multimask_first and click == 0 and not use_box)
            with nullcontext() if click in trained else torch.no_grad():
                low_res, iou_pred = self.model.decode(embedding, points=points, labels=labels, boxes=boxes,
                                                      mask_input=previous, multimask_output=multimask)
                logits = F.interpolate(low_res, size=(size,) * 3, mode="trilinear", align_corners=False)
                masks = (logits > 0).detach()  # (B, M, s, s, s)
                inter = (masks & hard).flatten(2).sum(2).float()  # (B, M)
                union = (masks | hard).flatten(2).sum(2).float().clamp(min=1)
                losses = self._mask_losses(logits, soft)  # (B, M)
            best = losses.detach().argmin(1)  # (B,): the mask the loss is on (and, by default, the next click)
            rows = torch.arange(len(best), device=best.device)
            iou_true = inter / union  # (B, M)
            if click in trained:
                total = total + losses[rows, best].mean() + F.mse_loss(iou_pred, iou_true)
                if logits.shape[1] > 1 and self.rank_weight > 0:
                    total = total + self.rank_weight * self._rank_loss(iou_pred, iou_true)
            if logits.shape[1] > 1:
                ranked.append((iou_pred.detach().argmax(1) == iou_true.argmax(1)).float())
            kept = iou_pred.detach().argmax(1) if self.follow == "predicted" else best  # (B,)
            pred = masks[rows, kept][:, None]  # (B, 1, s, s, s)
            new_points, new_labels = error_clicks(pred.float(), hard.float(), gen, self.central_prob)
            new_points = self._to_full(new_points, gen)
            points = new_points if points is None else torch.cat([points, new_points], 1)
            labels = new_labels if labels is None else torch.cat([labels, new_labels], 1)
            previous = low_res[rows, kept][:, None].detach()
        # parameters this sample did not use (box embeddings without a box) still get a (zero) gradient, so DDP
        # can reduce every bucket without find_unused_parameters
        unused = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
        shown = iou_pred.detach().argmax(1)  # of the last click's masks, the one inference keeps (no target there)
        sizes = masks[rows, shown].flatten(1).sum(1) + hard.flatten(1).sum(1)
        dice = 2 * inter[rows, shown] / sizes.float().clamp(min=1)
        rank_acc = float(torch.cat(ranked).mean()) if ranked else float("nan")
        return total / self.loss_clicks + unused, {"dice": float(dice.mean()), "rank_acc": rank_acc}


class HolisticDistillationStep(nn.Module):
    """ESAM-style holistic distillation for students of any shape (convolutional ones included): match the
    teacher's final image embedding, its output mask (soft targets) and, where present, the ground truth, for the
    same clicks. The teacher is frozen and not part of this module's parameters."""

    def __init__(self, student: nn.Module, teacher: nn.Module, clicks: int, weights: dict[str, float]) -> None:
        super().__init__()
        self.student = student
        self.teacher = [teacher]  # a list keeps it out of this module's parameters and of DDP
        self.clicks = clicks
        self.weights = weights
        s_dim, t_dim = student.config.prompt_dim, teacher.config.prompt_dim
        self.project = nn.Identity() if s_dim == t_dim else nn.Conv3d(s_dim, t_dim, 1)
        self.mask_loss = DiceCELoss(sigmoid=True)

    def forward(self, images: torch.Tensor, targets: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict]:
        teacher = self.teacher[0]
        gen = torch.Generator().manual_seed(int(seed))
        size = images.shape[-1]
        with torch.no_grad():
            t_emb = teacher.encode(images)
        s_emb = self.student.encode(images)
        t_flat = t_emb.embedding.float()
        feature = F.mse_loss(self.project(s_emb.embedding), t_flat) / t_flat.pow(2).mean().clamp(min=1e-6)
        points, labels = first_clicks(targets, gen)
        s_prev = t_prev = None
        output = truth = images.new_zeros(())
        for _ in range(self.clicks):
            with torch.no_grad():
                t_low, _ = teacher.decode(t_emb, points=points, labels=labels, mask_input=t_prev)
            s_low, _ = self.student.decode(s_emb, points=points, labels=labels, mask_input=s_prev)
            t_soft = torch.sigmoid(t_low)
            if t_soft.shape[2:] != s_low.shape[2:]:  # a student with a finer output than its teacher's S/4
                t_soft = F.interpolate(t_soft, size=s_low.shape[2:], mode="trilinear", align_corners=False)
            output = output + F.binary_cross_entropy_with_logits(s_low, t_soft)
            logits = F.interpolate(s_low, size=(size,) * 3, mode="trilinear", align_corners=False)
            truth = truth + self.mask_loss(logits, targets)
            new_points, new_labels = error_clicks((logits > 0).float().detach(), targets, gen)
            points, labels = torch.cat([points, new_points], 1), torch.cat([labels, new_labels], 1)
            s_prev, t_prev = s_low.detach(), t_low
        w = self.weights
        loss = (w["feature"] * feature + (w["output"] * output + w["truth"] * truth) / self.clicks
                + 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad))
        return loss, {"feature_loss": float(feature.detach()), "output_loss": float(output.detach()) / self.clicks,
                      "dice_ce": float(truth.detach()) / self.clicks}
