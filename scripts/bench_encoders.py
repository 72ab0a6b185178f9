#!/usr/bin/env python
"""Encoder, decoder and attention timings at 128^3 on CPU (medians), each against its baseline in this process.

    python scripts/bench_encoders.py            # 2 threads, as on a 2-core workstation
    python scripts/bench_encoders.py --quick    # fewer repeats

Rows:
1. full-size SAM-Med3D encoder: medsam3d's exact padding-free windows vs the padded-window formulation of the
   same math (the published code's), same random weights: max |difference| and speed-up.
2. full-size FastSAM3D student encoder: ours vs the dense reference formulation.
3. medsam3d-tiny encoder, and one decoder call ("a click") for medsam3d-tiny and SAM-Med3D.
4. medsam3d-tiny's ``fine_output``: a 3-mask click with 64^3 against 32^3 logits, and the S/2 map's projection,
   which the encoder does once per window, timed as if the decoder did it on every click.
5. dense attention vs medsam3d-tiny's sparse dilated / window attention from 512 to 4096 tokens.
"""

from __future__ import annotations

import argparse

import torch
from benchutil import median_time

from medsam3d.models import build_model
from medsam3d.models.attention import dense_attention, grouped_attention


def randomise_positions(model) -> None:
    """Relative/absolute position tables are zero-initialised; fill them so every term is exercised."""
    with torch.no_grad():
        for name, p in model.image_encoder.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0, 0.02)


def exact_vs_padded(name: str, image: torch.Tensor, repeats: int, baseline_repeats: int) -> None:
    torch.manual_seed(0)
    model = build_model(name)
    randomise_positions(model)
    encoder = model.image_encoder
    encoder.padded_reference = False
    ours = model.encode(image)
    t_ours = median_time(lambda: model.encode(image), repeats)
    encoder.padded_reference = True
    reference = model.encode(image)
    t_ref = median_time(lambda: model.encode(image), baseline_repeats, warmup=0)
    encoder.padded_reference = False
    diff = (ours.embedding - reference.embedding).abs().max().item()
    print(f"{name:>14} encoder  medsam3d {t_ours:7.3f} s | reference formulation {t_ref:7.3f} s | "
          f"speed-up {t_ref / t_ours:5.1f}x | max |diff| {diff:.2e}")


def attention_scaling(repeats: int) -> None:
    heads, hd, group = 6, 32, (4, 4, 4)
    print(f"\nattention, {heads} heads x {hd}: time per call (median)")
    print(f"{'tokens':>8} {'dense':>10} {'dilated':>10} {'window':>10} {'dense/dilated':>14}")
    rows = []
    for side in (8, 10, 12, 14, 16):
        q, k, v = (torch.randn(1, side, side, side, heads, hd) for _ in range(3))
        t_dense = median_time(lambda: dense_attention(q, k, v), repeats)
        t_dil = median_time(lambda: grouped_attention(q, k, v, group, "dilated"), repeats)
        t_win = median_time(lambda: grouped_attention(q, k, v, group, "window"), repeats)
        rows.append((side**3, t_dense, t_dil, t_win))
        print(f"{side**3:>8} {t_dense * 1e3:8.2f}ms {t_dil * 1e3:8.2f}ms {t_win * 1e3:8.2f}ms {t_dense / t_dil:13.1f}x")
    (n0, d0, s0, w0), (n1, d1, s1, w1) = rows[0], rows[-1]
    print(f"growth {n0} -> {n1} tokens ({n1 / n0:.0f}x): dense {d1 / d0:.1f}x, dilated {s1 / s0:.1f}x, "
          f"window {w1 / w0:.1f}x")


def refine_conv_channels(reps: int) -> None:
    """Why medsam3d-tiny's decoder widens its guidance maps to 8 channels (mask_decoder.SkipFusion3D): the 3x3x3
    conv at 32^3 and batch 1 with 16 + 3 input channels against 16 + 8, as in one click's decode."""
    times = {}
    for c_in in (19, 24):
        conv = torch.nn.Conv3d(c_in, 16, kernel_size=3, padding=1)
        x = torch.randn(1, c_in, 32, 32, 32)
        times[c_in] = median_time(lambda: conv(x), 5 * reps, warmup=2)
    print(f"decoder refine conv 3x3x3 at 32^3, batch 1: 19 input channels {times[19] * 1e3:6.2f} ms | "
          f"24 input channels {times[24] * 1e3:6.2f} ms | ratio {times[19] / times[24]:.1f}x\n")


def fine_output_costs(image: torch.Tensor, reps: int) -> None:
    """What ``fine_output`` adds to a click (3 masks, as ``multimask_refine`` decodes), with every mask returned
    (training) and with ``keep_best`` (the Segmenter: the S/2 correction for the kept mask only); and what its S/2
    projection would add if it ran in the decoder on every click instead of once per window in the encoder."""
    points, labels = torch.tensor([[[64.0, 60.0, 70.0]]]), torch.tensor([[1]])
    times = {}
    for fine in (False, True):
        torch.manual_seed(0)
        model = build_model("medsam3d-tiny", fine_output=fine)
        features = model.encode(image)
        for keep_best in (False, True):
            times[fine, keep_best] = median_time(
                lambda: model.decode(features, points=points, labels=labels, multimask_output=True,
                                     keep_best=keep_best), 10 * reps, warmup=3)
    s2 = torch.randn(1, model.config.stem_chans[0], 64, 64, 64)
    t_project = median_time(lambda: model.image_encoder.fine_skip(s2), 10 * reps, warmup=3)
    base = times[False, True]
    print("medsam3d-tiny click, 3 masks decoded (ratios against 32^3 logits, best kept):")
    for (fine, keep_best), t in times.items():
        print(f"  {'64^3 (fine_output)' if fine else '32^3 logits       '}  "
              f"{'best mask kept' if keep_best else 'all 3 returned'}  {t * 1e3:6.2f} ms  {t / base:4.2f}x")
    print(f"  the S/2 projection alone {t_project * 1e3:5.2f} ms (per window, not per click)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reps = 3 if args.quick else 7
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; times are medians\n")
    image = torch.randn(1, 1, 128, 128, 128)
    with torch.inference_mode():
        exact_vs_padded("sam-med3d", image, reps, 1 if args.quick else 3)
        exact_vs_padded("fastsam3d", image, reps, reps)

        tiny = build_model("medsam3d-tiny")
        t_tiny = median_time(lambda: tiny.encode(image), 3 * reps)
        print(f"{'medsam3d-tiny':>14} encoder  {t_tiny:7.3f} s  ({sum(p.numel() for p in tiny.parameters()) / 1e6:.1f}M "
              f"parameters)")

        points, labels = torch.tensor([[[64.0, 60.0, 70.0]]]), torch.tensor([[1]])
        for name, model in (("medsam3d-tiny", tiny), ("sam-med3d", build_model("sam-med3d"))):
            emb = model.encode(image)
            low_res, _ = model.decode(emb, points=points, labels=labels)
            mask = low_res  # the second click feeds back the previous logits, as interactive use does
            t_dec = median_time(
                lambda: model.decode(emb, points=points, labels=labels, mask_input=mask), 10 * reps, warmup=3
            )
            print(f"{name:>14} decoder  {t_dec * 1e3:7.2f} ms per click (point + previous mask)")

        refine_conv_channels(reps)
        fine_output_costs(image, reps)
        attention_scaling(reps)


if __name__ == "__main__":
    main()
