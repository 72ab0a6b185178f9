#!/usr/bin/env python
"""Training throughput at 128^3 on this CPU: samples per second of one interactive training step (encode, one
click decoded, loss, backward, optimiser step) for the teacher, the FastSAM3D student and medsam3d-tiny, and
stage-1 distillation steps with cached teacher features vs a live teacher (same student, same process).

    python scripts/bench_training.py [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from benchutil import median_time

from medsam3d.models import build_model
from medsam3d.training.distill import LayerwiseDistillation, matched_teacher_blocks
from medsam3d.training.interactive import InteractiveStep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = torch.randn(1, 1, 128, 128, 128)
    target = torch.zeros(1, 1, 128, 128, 128)
    target[..., 40:90, 50:80, 45:85] = 1
    print(f"torch {torch.__version__}, {args.threads} threads, batch 1 at 128^3, medians of {args.repeats}\n")
    print("interactive training step (1 click): samples/s")
    for name, down in (("sam-med3d", 1), ("fastsam3d", 1), ("medsam3d-tiny", 1), ("medsam3d-tiny", 2)):
        model = build_model(name).train()
        step = InteractiveStep(model, clicks=1, loss_downsample=down)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def one() -> None:
            loss, _ = step(image, target, seed=0)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        seconds = median_time(one, args.repeats)
        where = "loss at 128^3" if down == 1 else f"loss at {128 // down}^3"
        print(f"  {name:<14} {where:<14} {1 / seconds:7.3f} samples/s  ({seconds:.2f} s/step)")

    teacher = build_model("sam-med3d").eval()
    student = build_model("fastsam3d").train()
    with torch.no_grad():
        t_streams, t_final = teacher.image_encoder.forward_blocks(image)
        s_streams, s_final = student.image_encoder.forward_blocks(image)
    blocks = matched_teacher_blocks(len(s_streams), len(t_streams))
    distiller = LayerwiseDistillation(student.image_encoder, [s.shape[-1] for s in s_streams],
                                      [t_streams[b].shape[-1] for b in blocks], s_final.shape[1], t_final.shape[1])
    opt = torch.optim.AdamW(distiller.parameters(), lr=1e-5)
    cached = ([t_streams[b].half() for b in blocks], t_final.half())

    def distill_step(live: bool) -> None:
        if live:
            with torch.no_grad():
                streams, final = teacher.image_encoder.forward_blocks(image)
            feats = ([streams[b] for b in blocks], final)
        else:
            feats = cached
        loss, _ = distiller(image, feats[0], feats[1], len(blocks))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t_cached = median_time(lambda: distill_step(False), args.repeats)
    t_live = median_time(lambda: distill_step(True), args.repeats)
    print("\ndistillation stage 1 (SAM-Med3D teacher -> FastSAM3D student), all 6 layers matched")
    print(f"  cached teacher features {1 / t_cached:7.3f} samples/s  ({t_cached:.2f} s/step)")
    print(f"  live teacher            {1 / t_live:7.3f} samples/s  ({t_live:.2f} s/step)")
    print(f"  cached / live speed-up  {t_live / t_cached:7.2f}x")


if __name__ == "__main__":
    main()
