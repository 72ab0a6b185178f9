"""Distillation (training.distill): the progressive schedule, holistic distillation with worker processes and with
a fine (S/2) student under an S/4 teacher, and a run resumed between stages."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from medsam3d.training.config import load_config
from medsam3d.training.distill import matched_layers, matched_teacher_blocks

from helpers import fine_model, random_image, read_out_grad

REPO = Path(__file__).resolve().parents[2]


def test_progressive_schedule():
    assert matched_teacher_blocks(6, 12) == [1, 3, 5, 7, 9, 11]  # student block i <- teacher block 2i
    assert matched_teacher_blocks(3, 6) == [1, 3, 5]
    assert [matched_layers(s, 3, 2) for s in range(8)] == [1, 1, 2, 2, 3, 3, 3, 3]


def test_holistic_distillation_with_worker_processes(toy, tmp_path):
    from medsam3d.training.distill import run_distill

    cfg = load_config(REPO / "configs/smoke/distill.yaml", [
        f"data.roots=[{toy}]", "distill.mode=holistic", "distill.holistic_steps=8", "data.workers=2",
        "train.log_every=1", "train.lr=0.003",
    ])
    run_distill(cfg, tmp_path / "holistic")
    with open(tmp_path / "holistic" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    feature = [float(r["value"]) for r in rows if r["metric"] == "feature_loss"]
    assert len(feature) == 8 and feature[-1] < feature[0]
    state = torch.load(tmp_path / "holistic" / "checkpoints" / "last.pt", weights_only=False)
    assert state["stage"] == "holistic" and not any(k.startswith("teacher") for k in state["distiller"])


def test_distill_resumed_between_stages_starts_stage_2_from_the_stage_1_student(toy, tmp_path):
    from medsam3d.training.distill import run_distill

    base = [f"data.roots=[{toy}]", "distill.stage1_steps=3"]
    out = tmp_path / "distill"
    run_distill(load_config(REPO / "configs/smoke/distill.yaml", [*base, "distill.stage2_steps=0"]), out)
    stage1 = torch.load(out / "model.pt", weights_only=False)["model"]
    run_distill(load_config(REPO / "configs/smoke/distill.yaml", [*base, "distill.stage2_steps=2"]), out,
                resume=True)
    final = torch.load(out / "model.pt", weights_only=False)["model"]
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["stage"] == 2 and state["step"] == 5
    encoder = [k for k in stage1 if k.startswith("image_encoder.")]
    assert all(torch.equal(stage1[k], final[k]) for k in encoder)  # frozen in stage 2, carried over from stage 1
    assert any(not torch.equal(stage1[k], final[k]) for k in final if k.startswith("mask_decoder."))


def test_holistic_distillation_takes_a_fine_student_under_an_s4_teacher():
    """The teacher's S/4 masks are upsampled to the student's S/2 grid for the output loss."""
    from medsam3d.training.distill import HolisticDistillationStep

    student, teacher = fine_model(True).train(), fine_model(False, seed=1).eval()
    step = HolisticDistillationStep(student, teacher, clicks=2, weights={"feature": 1.0, "output": 1.0, "truth": 1.0})
    targets = torch.zeros(1, 1, 64, 64, 64)
    targets[..., 20:40, 18:38, 24:44] = 1
    loss, metrics = step(random_image(), targets, seed=0)
    loss.backward()
    assert torch.isfinite(loss) and metrics["output_loss"] > 0
    assert read_out_grad(student) > 0
