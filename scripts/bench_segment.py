#!/usr/bin/env python
"""`medsam3d segment` on a 512 x 512 x 300 CT-like volume: process start to written mask, against reading and
writing the same volume with SimpleITK in this run; peak memory; and a further click on a cached window.

    python scripts/bench_segment.py [--model default] [--threads 2] [--repeats 3]

The default is the packaged default model, as `segment` runs it for a user (the synthetic "liver" fits one
window). ``--model ARCH --random`` times an architecture with random weights saved to a temporary checkpoint
instead: that mask is not a segmentation, and as random weights mark everything, growth is then capped at one
window (``--max-windows 1``) to time the pipeline of a one-window object.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk
import torch
from benchutil import median_time, median_times

from medsam3d.cli import FAST_EXIT_OFF


def ct_like(shape=(512, 512, 300)) -> sitk.Image:
    rng = np.random.default_rng(0)
    k, j, i = np.ogrid[: shape[2], : shape[1], : shape[0]]
    body = ((i - 256) / 230.0) ** 2 + ((j - 256) / 180.0) ** 2 <= 1
    array = np.where(body, 40, -1000).astype(np.int16) + rng.integers(-20, 20, (shape[2], 1, shape[0]), dtype=np.int16)
    liver = ((i - 180) / 70.0) ** 2 + ((j - 230) / 60.0) ** 2 + ((k - 150) / 60.0) ** 2 <= 1
    array = np.where(liver, 120, array).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.75, 0.75, 1.0))
    image.SetOrigin((-190.0, -190.0, -150.0))
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="default (packaged), a stored name, or an architecture")
    parser.add_argument("--checkpoint", type=Path, help="trained weights for --model ARCH_OR_YAML")
    parser.add_argument("--random", action="store_true", help="random weights for --model ARCH (plumbing only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    from medsam3d.evaluation.metrics import dice
    from medsam3d.io import ijk_from_sitk_array, write_volume
    from medsam3d.models import build_model
    from medsam3d.segmenter import Segmenter

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scan = tmp / "ct.nii.gz"
        sitk.WriteImage(ct_like(), str(scan), useCompression=True)
        model_args: list[str] = ["--model", args.model]
        ckpt = args.checkpoint
        if ckpt is not None:
            model_args += ["--checkpoint", str(ckpt)]
        elif args.random:
            ckpt = tmp / "weights.pth"
            torch.save(build_model(args.model).state_dict(), ckpt)
            model_args += ["--checkpoint", str(ckpt), "--max-windows", "1"]

        def read_write() -> None:
            sitk.WriteImage(sitk.ReadImage(str(scan)), str(tmp / "copy.nii.gz"), useCompression=True)

        def segment(env: Optional[dict] = None) -> None:
            subprocess.run([sys.executable, "-m", "medsam3d", "segment", str(scan), "--point", "180,230,150",
                            "-o", str(tmp / "mask.nii.gz"), *model_args, "--threads", str(args.threads), "-q"],
                           check=True, env=env)

        def start_up() -> None:  # process start and the imports segment needs, ended as cli.run ends it
            subprocess.run([sys.executable, "-c", "import os, medsam3d.cli, medsam3d.segmenter; os._exit(0)"],
                           check=True)

        slow_exit = dict(os.environ, **{FAST_EXIT_OFF: "1"})  # the interpreter's own teardown (cli.run)
        t_io = median_time(read_write, args.repeats, warmup=0)
        t_seg, t_seg_slow, t_start = median_times([segment, lambda: segment(slow_exit), start_up], args.repeats)
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2

        seg = Segmenter(model=args.model, checkpoint=ckpt, threads=args.threads, max_windows=1 if args.random else 8,
                        allow_random_weights=args.random)
        seg.set_volume(scan)
        first = seg.predict(points=[(180, 230, 150)])
        t_click = median_time(lambda: seg.predict(points=[(180, 230, 150), (200, 240, 150)], refine=True), 5,
                              warmup=0)
        truth = ijk_from_sitk_array(sitk.GetArrayFromImage(ct_like())) == 120
        overlap = dice(first.mask.array, truth)
        # the mask as segment writes it (the read-in layout, io.zeros_ijk) against the same mask in C order
        in_layout = first.mask
        c_order = in_layout.with_array(np.ascontiguousarray(in_layout.array))
        t_write = median_time(lambda: write_volume(in_layout, tmp / "m.nii.gz"), args.repeats, warmup=1)
        t_write_c = median_time(lambda: write_volume(c_order, tmp / "m.nii.gz"), args.repeats, warmup=1)

    weights = "random weights, one window" if args.random else f"{len(first.windows)} window(s), Dice {overlap:.3f}"
    print(f"volume 512x512x300 int16 (.nii.gz), model {args.model} ({weights}), "
          f"{args.threads} threads, medians of {args.repeats}")
    print(f"SimpleITK read + write          {t_io:6.2f} s")
    print(f"medsam3d segment (process)      {t_seg:6.2f} s   overhead {t_seg - t_io:+.2f} s   "
          f"ratio {t_seg / t_io:.2f}x")
    print(f"  the same, normal interp. exit {t_seg_slow:6.2f} s   overhead {t_seg_slow - t_io:+.2f} s   "
          f"fast exit saves {t_seg_slow - t_seg:.2f} s")
    print(f"  of which start-up and imports {t_start:6.2f} s   ({t_start / t_seg:.0%} of the fast-exit process)")
    print(f"peak RSS of a segment process   {peak_gb:6.2f} GB")
    print(f"further click, cached window    {t_click:6.3f} s (API: decode + paste-back)")
    print(f"writing the mask (.nii.gz)      {t_write:6.3f} s   C-order array {t_write_c:.3f} s   "
          f"ratio {t_write_c / t_write:.2f}x")


if __name__ == "__main__":
    main()
