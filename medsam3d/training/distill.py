"""``medsam3d distill``: FastSAM3D's layer-wise progressive distillation, then decoder fine-tuning on masks.

Stage 1 (teacher frozen): student block i is matched to teacher block round(i * T / S) (block 2i for a 6-block
student of a 12-block teacher), through a linear projection when widths differ. The number of matched layers
grows by one every ``schedule_every`` steps; once all are matched, the final embeddings are matched too. Teacher
features are computed once per (fixed) crop with the fast exact teacher and cached in fp16.

Stage 2: the student's prompt encoder and decoder (copied from the teacher when the widths agree) are trained on
masks with the interactive loop, the student encoder frozen unless ``stage2_train_student``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..atomic import atomic_output
from . import ddp
from .interactive import HolisticDistillationStep
from .trainer import Run, build_from, interactive_loop, set_trainable, step_seed


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
        streams, final = self.encoder.forward_blocks(images)
        losses = [relative_mse(self.projections[i](streams[i]), teacher_streams[i]) for i in range(n_layers)]
        loss = torch.stack(losses).mean()
        info = {"layers": float(n_layers), "feature_loss": float(loss.detach())}
        if n_layers == len(streams):  # all layers matched: the final embedding too
            final_loss = relative_mse(self.final(final), teacher_final)
            loss = loss + final_loss
            info["embedding_loss"] = float(final_loss.detach())
        # parameters not used at this stage of the schedule still take part (DDP needs every grad defined)
        loss = loss + 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)
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


def _holistic(run: Run, student: nn.Module, teacher: nn.Module) -> Path:
    """ESAM's holistic distillation: one stage, embedding + teacher masks + ground truth (interactive clicks)."""
    d, t = run.cfg["distill"], run.cfg["train"]
    steps = int(d["holistic_steps"])
    student.train()
    step_module = HolisticDistillationStep(student, teacher, int(t["clicks"]), dict(d["holistic_weights"]))
    opt, sched = run.optimiser([p for p in step_module.parameters() if p.requires_grad], steps)
    start = run.restore(step_module, "distiller", opt, sched, "holistic distillation") if run.resume_state else 0
    wrapped = run.wrap(step_module)
    batches = run.batches(run.dataset(student.config.img_size), start)
    for step in range(start, steps):
        batch = next(batches)
        with run.autocast():
            loss, info = wrapped(batch["image"].to(run.device), batch["target"].to(run.device),
                                 step_seed(int(run.cfg["seed"]), step, 0, run.rank))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_value = ddp.mean_across_ranks(float(loss.detach()), run.device)
        if (step + 1) % int(t["log_every"]) == 0 or step == start:
            run.metrics(step + 1, {"loss": loss_value, **info, "lr": sched.get_last_lr()[0]})
            run.log(f"holistic step {step + 1}/{steps} loss {loss_value:.4f}")
        if (step + 1) % int(t["checkpoint_every"]) == 0 or step + 1 == steps:
            run.save({"stage": "holistic", "step": step + 1, "rank_digests": run.check_in_sync(step_module),
                      "distiller": step_module.state_dict(), "model": student.state_dict(),
                      "optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
    return run.finish(student)


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
    with torch.no_grad():
        streams, final = encoder.forward_blocks(torch.zeros(1, 1, img_size, img_size, img_size, device=device))
    return [s.shape[-1] for s in streams], final.shape[1]


def run_distill(cfg: dict, out: str | Path, resume: bool = False) -> Path:
    run = Run(cfg, out, resume, "distill")
    try:
        d = cfg["distill"]
        if d["mode"] not in ("layerwise", "holistic"):
            raise InputError(f"distill.mode must be layerwise or holistic, got {d['mode']!r}")
        teacher = build_from(d["teacher"], run.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        student = build_from(cfg["model"], run.device)
        if student.config.img_size != teacher.config.img_size:
            raise InputError("student and teacher must take the same crop size (img_size)")
        if d["mode"] == "holistic":
            return _holistic(run, student, teacher)
        if not cfg["model"].get("checkpoint") and _same_decoder(student, teacher):
            # FastSAM3D reuses SAM-Med3D's prompt encoder and decoder
            student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict(), strict=False)
            student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())
            run.log("student starts from the teacher's prompt encoder and mask decoder")
        size = student.config.img_size
        s_widths, s_out = _widths(student.image_encoder, size, run.device)
        t_widths_all, t_out = _widths(teacher.image_encoder, size, run.device)
        blocks = matched_teacher_blocks(len(s_widths), len(t_widths_all))
        run.log(f"student blocks 1..{len(s_widths)} <- teacher blocks {[b + 1 for b in blocks]}")
        stage1, stage2 = int(d["stage1_steps"]), int(d["stage2_steps"])
        distiller = LayerwiseDistillation(student.image_encoder, s_widths, [t_widths_all[b] for b in blocks],
                                          s_out, t_out).to(run.device)
        state = run.resume_state or {}
        start = int(state.get("step", 0))

        if start < stage1:  # ------------------------------------------------ stage 1: features
            student.train()
            opt, sched = run.optimiser([p for p in distiller.parameters() if p.requires_grad], stage1)
            if state.get("stage") == 1:
                run.restore(distiller, "distiller", opt, sched, "stage 1")
            cache = TeacherCache(teacher, blocks, run.out / "teacher_cache", bool(d["feature_cache"]))
            wrapped = run.wrap(distiller)
            dataset = run.dataset(size, fixed=True)
            batches = run.batches(dataset, start)
            for step in range(start, stage1):
                batch = next(batches)
                images = batch["image"].to(run.device)
                t_streams, t_final = cache(images, batch["index"].tolist())
                n_layers = matched_layers(step, len(s_widths), d["schedule_every"])
                with run.autocast():
                    loss, info = wrapped(images, t_streams, t_final, n_layers)
                loss.backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                loss_value = ddp.mean_across_ranks(float(loss.detach()), run.device)
                if (step + 1) % int(cfg["train"]["log_every"]) == 0 or step == start:
                    run.metrics(step + 1, {"stage": 1, "loss": loss_value, **info, "lr": sched.get_last_lr()[0]})
                    run.log(f"stage 1 step {step + 1}/{stage1} layers {n_layers} loss {loss_value:.5f}")
                if (step + 1) % int(cfg["train"]["checkpoint_every"]) == 0 or step + 1 == stage1:
                    run.save({"stage": 1, "step": step + 1, "rank_digests": run.check_in_sync(distiller),
                              "distiller": distiller.state_dict(),
                              "model": student.state_dict(), "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict()})
            start = stage1
            state = {}

        if stage2 > 0:  # ---------------------------------------------------- stage 2: masks
            if state.get("stage") == 1:  # resumed after stage 1 had finished: its student is in the checkpoint
                student.load_state_dict(state["model"])
            frozen = [] if d["stage2_train_student"] else ["image_encoder"]
            params = set_trainable(student, frozen)
            student.train()
            opt, sched = run.optimiser(params, stage2)
            if state.get("stage") == 2:
                run.restore(student, "model", opt, sched, "stage 2")
            interactive_loop(run, student, start, stage1 + stage2, opt, sched, {"stage": 2}, offset=stage1)
        return run.finish(student)
    finally:
        ddp.cleanup()


__all__ = ["run_distill", "matched_layers", "matched_teacher_blocks"]
