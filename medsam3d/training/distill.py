"""``medsam3d distill``: FastSAM3D's layer-wise progressive distillation, then decoder fine-tuning on masks.

Stage 1 (teacher frozen): student block i is matched to teacher block round(i * T / S) (block 2i for a 6-block
student of a 12-block teacher), through a linear projection when widths differ. The number of matched layers
grows by one every ``schedule_every`` steps; once all are matched, the final embeddings are matched too. Teacher
features are computed once per (fixed) crop with the fast exact teacher and cached in fp16.

Stage 2: the student's prompt encoder and decoder (copied from the teacher when the widths agree) are trained on
masks with the interactive loop, the student encoder frozen unless ``stage2_train_student``.

``distill.mode: holistic`` replaces both with ESAM's single stage (``HolisticDistillationStep``). Every stage is a
step function run by ``loop.train_stage``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from ..errors import InputError
from ..atomic import atomic_output
from . import ddp
from .clicks import error_clicks, first_clicks
from .config import HolisticWeights, ModelSpec, RunConfig
from .loop import Stage, simulated_clicks, train_stage
from .trainer import Run, build_from, interactive_stage, set_trainable


def matched_teacher_blocks(n_student: int, n_teacher: int) -> list[int]:
    """0-based teacher block index matched to each student block."""
    return [max(round((i + 1) * n_teacher / n_student) - 1, 0) for i in range(n_student)]


def matched_layers(step: int, n_student: int, every: int) -> int:
    """How many student blocks are matched at ``step`` (progressive schedule): 1, then +1 every ``every`` steps."""
    return min(n_student, 1 + step // max(int(every), 1))


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE divided by the teacher's mean square: every layer weighs the same whatever its scale."""
    teacher = teacher.float()
    return F.mse_loss(student, teacher) / teacher.pow(2).mean().clamp(min=1e-6)


class LayerwiseDistillation(nn.Module):
    """Student encoder + per-layer projections; forward returns the progressive feature-matching loss."""

    def __init__(self, student_encoder: nn.Module, student_widths: list[int], teacher_widths: list[int],
                 student_out: int, teacher_out: int) -> None:
        super().__init__()
        self.encoder = student_encoder
        self.projections = nn.ModuleList(
            nn.Identity() if s == t else nn.Linear(s, t) for s, t in zip(student_widths, teacher_widths)
        )
        self.final = nn.Identity() if student_out == teacher_out else nn.Conv3d(student_out, teacher_out, 1)

    def forward(self, images: torch.Tensor, teacher_streams: list[torch.Tensor], teacher_final: torch.Tensor,
                n_layers: int) -> tuple[torch.Tensor, dict]:
        """images (B, 1, S, S, S); the teacher's streams at the matched blocks, (B, N, width) each, and its final
        embedding (B, C, S/16, S/16, S/16) -> loss over the first ``n_layers`` blocks (+ the final embedding once
        every block is matched) and its parts."""
        streams, final = self.encoder.forward_blocks(images)
        losses = [relative_mse(self.projections[i](streams[i]), teacher_streams[i]) for i in range(n_layers)]
        loss = torch.stack(losses).mean()
        info = {"layers": float(n_layers), "feature_loss": float(loss.detach())}
        if n_layers == len(streams):  # all layers matched: the final embedding too
            final_loss = relative_mse(self.final(final), teacher_final)
            loss = loss + final_loss
            info["embedding_loss"] = float(final_loss.detach())
        return loss, info


class TeacherCache:
    """Teacher streams (at the matched blocks) and final embedding per structure index, fp16 on disk."""

    def __init__(self, teacher: nn.Module, blocks: list[int], folder: Path, enabled: bool) -> None:
        self.teacher, self.blocks, self.folder, self.enabled = teacher, blocks, folder, enabled
        folder.mkdir(parents=True, exist_ok=True)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, indices: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        per_sample = [self._one(images[i : i + 1], int(idx)) for i, idx in enumerate(indices)]
        streams = [torch.cat([s[0][k] for s in per_sample]) for k in range(len(self.blocks))]
        return streams, torch.cat([s[1] for s in per_sample])

    def _one(self, image: torch.Tensor, index: int):
        path = self.folder / f"{index}.pt"
        if self.enabled and path.exists():
            data = torch.load(path, map_location=image.device)
            return data["streams"], data["final"]
        all_streams, final = self.teacher.image_encoder.forward_blocks(image)
        streams = [all_streams[b].half() for b in self.blocks]
        final = final.half()
        if self.enabled:
            with atomic_output(path) as tmp:
                torch.save({"streams": [s.cpu() for s in streams], "final": final.cpu()}, tmp)
        return streams, final


class LayerwiseStep:
    """Stage 1's step function: the teacher's features of the batch's (fixed) crops, from the cache, matched by as
    many student blocks as the schedule has reached at this step."""

    def __init__(self, cache: TeacherCache, n_blocks: int, every: int) -> None:
        self.cache, self.n_blocks, self.every = cache, n_blocks, every

    def __call__(self, module: nn.Module, batch: dict, step: int, seed: int) -> tuple[torch.Tensor, dict]:
        images = batch["image"]
        with torch.autocast(images.device.type, enabled=False):  # the teacher in full precision, as cached
            t_streams, t_final = self.cache(images, batch["index"].tolist())
        loss, info = module(images, t_streams, t_final, matched_layers(step, self.n_blocks, self.every))
        return loss, {"stage": 1, **info}  # "stage" marks stage 1's rows of metrics.csv


class HolisticDistillationStep(nn.Module):
    """ESAM-style holistic distillation for students of any shape (convolutional ones included): match the
    teacher's final image embedding, its output mask (soft targets) and, where present, the ground truth, for the
    same clicks. The teacher is frozen and not part of this module's parameters."""

    def __init__(self, student: nn.Module, teacher: nn.Module, clicks: int,
                 weights: Union[HolisticWeights, dict[str, float]]) -> None:
        super().__init__()
        self.student = student
        self.teacher = [teacher]  # a list keeps it out of this module's parameters and of DDP
        self.clicks = clicks
        self.weights = HolisticWeights(**weights) if isinstance(weights, dict) else weights
        s_dim, t_dim = student.config.prompt_dim, teacher.config.prompt_dim
        self.project = nn.Identity() if s_dim == t_dim else nn.Conv3d(s_dim, t_dim, 1)
        self.mask_loss = DiceCELoss(sigmoid=True)

    def forward(self, images: torch.Tensor, targets: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict]:
        """images, targets (B, 1, S, S, S) -> weighted loss, and its parts (the mask parts averaged over clicks)."""
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
        loss = w.feature * feature + (w.output * output + w.truth * truth) / self.clicks
        return loss, {"feature_loss": float(feature.detach()), "output_loss": float(output.detach()) / self.clicks,
                      "dice_ce": float(truth.detach()) / self.clicks}


def _same_decoder(student: nn.Module, teacher: nn.Module) -> bool:
    """True when the teacher's prompt encoder and decoder fit the student as they are (same sizes, same PE)."""
    if student.config.reference_pe != teacher.config.reference_pe:
        return False
    for part in ("prompt_encoder", "mask_decoder"):
        mine = getattr(student, part).state_dict()
        if any(k not in mine or mine[k].shape != v.shape for k, v in getattr(teacher, part).state_dict().items()):
            return False
    return True


def _widths(encoder: nn.Module, img_size: int, device) -> tuple[list[int], int]:
    """-> the width of each block's token stream, and the final embedding's channels."""
    with torch.no_grad():
        streams, final = encoder.forward_blocks(torch.zeros(1, 1, img_size, img_size, img_size, device=device))
    return [s.shape[-1] for s in streams], final.shape[1]


def _frozen_teacher(spec: ModelSpec, device: torch.device) -> nn.Module:
    teacher = build_from(spec, device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def run_distill(cfg: RunConfig, out: str | Path, resume: bool = False) -> Path:
    """``medsam3d distill``: layer-wise (stage 1, then stage 2) or holistic, as ``distill.mode`` says."""
    run = Run(cfg, out, resume, "distill")
    try:
        teacher = _frozen_teacher(cfg.distill.teacher, run.device)
        student = build_from(cfg.model, run.device)
        if student.config.img_size != teacher.config.img_size:
            raise InputError("student and teacher must take the same crop size (img_size)")
        if cfg.distill.mode == "holistic":
            _holistic(run, student, teacher)
        else:
            _layerwise(run, student, teacher)
        return run.finish(student)
    finally:
        ddp.cleanup()


def _holistic(run: Run, student: nn.Module, teacher: nn.Module) -> None:
    """ESAM's holistic distillation: one stage, embedding + teacher masks + ground truth (interactive clicks)."""
    d = run.cfg.distill
    student.train()
    module = HolisticDistillationStep(student, teacher, run.cfg.train.clicks, d.holistic_weights)
    opt, sched = run.optimiser([p for p in module.parameters() if p.requires_grad], d.holistic_steps)
    start = run.restore(module, "distiller", opt, sched, "holistic distillation") if run.resume_state else 0
    stage = Stage(simulated_clicks, module, student, run.dataset(student.config.img_size), 0, d.holistic_steps,
                  label="holistic", tag="holistic", save_module=True)
    train_stage(run, stage, opt, sched, start)


def _layerwise(run: Run, student: nn.Module, teacher: nn.Module) -> None:
    """Stage 1 (features), then stage 2 (masks); a resumed run continues in the stage its checkpoint was in."""
    d = run.cfg.distill
    if not run.cfg.model.checkpoint and _same_decoder(student, teacher):
        # FastSAM3D reuses SAM-Med3D's prompt encoder and decoder
        student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict(), strict=False)
        student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())
        run.log("student starts from the teacher's prompt encoder and mask decoder")
    # built (its projections drawn from the seeded RNG) even when a resumed run is past stage 1
    distiller, blocks = _distiller(run, student, teacher)
    state = run.resume_state or {}
    start = int(state.get("step", 0))
    if start < d.stage1_steps:
        cache = TeacherCache(teacher, blocks, run.out / "teacher_cache", d.feature_cache)
        _feature_matching(run, student, distiller, LayerwiseStep(cache, len(blocks), d.schedule_every), state, start)
        start, state = d.stage1_steps, {}
    if d.stage2_steps > 0:
        _mask_finetuning(run, student, state, start)


def _distiller(run: Run, student: nn.Module, teacher: nn.Module) -> tuple[LayerwiseDistillation, list[int]]:
    """-> the student's encoder with its projections onto the teacher's widths, and the teacher block matched to
    each student block."""
    size = student.config.img_size
    s_widths, s_out = _widths(student.image_encoder, size, run.device)
    t_widths, t_out = _widths(teacher.image_encoder, size, run.device)
    blocks = matched_teacher_blocks(len(s_widths), len(t_widths))
    run.log(f"student blocks 1..{len(s_widths)} <- teacher blocks {[b + 1 for b in blocks]}")
    distiller = LayerwiseDistillation(student.image_encoder, s_widths, [t_widths[b] for b in blocks], s_out, t_out)
    return distiller.to(run.device), blocks


def _feature_matching(run: Run, student: nn.Module, distiller: LayerwiseDistillation, step: LayerwiseStep,
                      state: dict, start: int) -> None:
    """Stage 1: the student's blocks matched to the teacher's, progressively, on fixed crops."""
    d = run.cfg.distill
    student.train()
    opt, sched = run.optimiser([p for p in distiller.parameters() if p.requires_grad], d.stage1_steps)
    if state.get("stage") == 1:
        run.restore(distiller, "distiller", opt, sched, "stage 1")
    stage = Stage(step, distiller, student, run.dataset(student.config.img_size, fixed=True), 0, d.stage1_steps,
                  label="stage 1", tag=1, save_module=True)
    train_stage(run, stage, opt, sched, start)


def _mask_finetuning(run: Run, student: nn.Module, state: dict, start: int) -> None:
    """Stage 2: the interactive loop on the student, its encoder frozen unless ``stage2_train_student``."""
    d = run.cfg.distill
    if state.get("stage") == 1:  # resumed after stage 1 had finished: its student is in the checkpoint
        student.load_state_dict(state["model"])
    params = set_trainable(student, [] if d.stage2_train_student else ["image_encoder"])
    student.train()
    opt, sched = run.optimiser(params, d.stage2_steps)
    if state.get("stage") == 2:
        run.restore(student, "model", opt, sched, "stage 2")
    first, last = d.stage1_steps, d.stage1_steps + d.stage2_steps
    train_stage(run, interactive_stage(run, student, first, last, label="stage 2", tag=2), opt, sched, start)


__all__ = ["run_distill", "matched_layers", "matched_teacher_blocks", "HolisticDistillationStep"]
