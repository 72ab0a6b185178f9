#!/usr/bin/env python
"""Latency of `medsam3d serve --stdio` as the 3D Slicer module sees it: a real worker process, a real scan, two
objects, clicks placed by the evaluation protocol (at the largest error, from the labels), timed at the client.

    python scripts/bench_serve.py                      # the example CT, liver and spleen, 50 clicks
    python scripts/bench_serve.py --scan data/public/Dataset201_TotalSegCT/imagesTr/ts_ct_0000.nii.gz \\
        --labels data/public/Dataset201_TotalSegCT/labelsTr/ts_ct.nii.gz --objects 5,1
    python scripts/bench_serve.py --scan ... --labels ... --spacing 0.8,0.8,1.5   # on a clinical CT grid

Prints medians and p95 of: the first click on each object (which pays for encoding its window), click-to-mask
(add_point + get_mask with the mask written to a file, the way `get_mask {path}` works), and click-to-mask with
the changed box returned inline (what the Slicer module uses). In the same run, as the baseline, the median time
of reading the scan and writing one mask with SimpleITK in this process. Pause background training first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medsam3d.evaluation.protocol import deepest_point, next_click  # noqa: E402
from medsam3d.io import ijk_from_sitk_array  # noqa: E402
from medsam3d.serve.protocol import unpack_box  # noqa: E402
from benchutil import median_times  # noqa: E402


class Client:
    def __init__(self, threads: int, backend: str, every_window: bool) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "medsam3d", "serve", "--stdio", "--threads",
                                         str(threads), "--backend", backend,
                                         "--every-window" if every_window else "--incremental"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.n = 0

    def __call__(self, cmd: str, **fields) -> dict:
        self.n += 1
        self.process.stdin.write((json.dumps({"id": self.n, "cmd": cmd, **fields}) + "\n").encode())
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline())
        if not reply["ok"]:
            raise SystemExit(f"bench_serve: {cmd}: {reply['error']}")
        return reply


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scan", type=Path, default=REPO / "data" / "example_ct_sm.nii.gz")
    parser.add_argument("--labels", type=Path, help="label map on the scan's grid (default: the example's "
                        "TotalSegmentator labels from bash scripts/fetch_public_data.sh)")
    parser.add_argument("--objects", default="5,1", help="label values of the objects (default: liver, spleen)")
    parser.add_argument("--clicks", type=int, default=50, help="clicks in all, alternating between the objects")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="auto", help="torch, onnxruntime, or auto (the Slicer module's: "
                                                          "onnxruntime when installed)")
    parser.add_argument("--every-window", action="store_true", help="serve --every-window: a click re-decodes every "
                                                                    "window of the object (default: the worker's "
                                                                    "incremental refinement)")
    parser.add_argument("--spacing", help="first resample the scan (linear) and labels (nearest) to this grid, "
                                          "e.g. 0.8,0.8,1.5: a clinical grid's per-voxel costs")
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args()

    if args.labels is None:
        args.labels = REPO / "data" / "public" / "Dataset201_TotalSegCT" / "labelsTr" / "ts_ct_sm.nii.gz"
        if not args.labels.is_file():
            raise SystemExit(f"bench_serve: {args.labels} not found: run bash scripts/fetch_public_data.sh or give "
                             "--labels")
    with tempfile.TemporaryDirectory() as tmp:
        if args.spacing:
            grid = [float(v) for v in args.spacing.split(",")]
            args.scan = resampled(args.scan, grid, sitk.sitkLinear, Path(tmp) / "scan.nii.gz")
            args.labels = resampled(args.labels, grid, sitk.sitkNearestNeighbor, Path(tmp) / "labels.nii.gz")
        run(args, Path(tmp))
    return 0


def resampled(path: Path, spacing: list[float], interpolator, out: Path) -> Path:
    """``path`` resampled to ``spacing`` over the same extent, written to ``out``."""
    image = sitk.ReadImage(str(path))
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    reference = sitk.Image(size, image.GetPixelID())
    reference.SetSpacing(spacing)
    reference.SetOrigin(image.GetOrigin())
    reference.SetDirection(image.GetDirection())
    fill = float(sitk.GetArrayViewFromImage(image).min())
    sitk.WriteImage(sitk.Resample(image, reference, sitk.Transform(), interpolator, fill), str(out), True)
    return out


def run(args, tmp: Path) -> None:
    labels = ijk_from_sitk_array(sitk.GetArrayFromImage(sitk.ReadImage(str(args.labels))))
    values = [int(v) for v in args.objects.split(",")]
    targets = [labels == v for v in values]
    spacing = sitk.ReadImage(str(args.labels)).GetSpacing()

    out = tmp / "mask.nii.gz"
    scan_image = sitk.ReadImage(str(args.scan))

    def read_write() -> None:  # the baseline: what any tool pays to read this scan and write one mask
        image = sitk.ReadImage(str(args.scan))
        sitk.WriteImage(sitk.Cast(image > 0, sitk.sitkUInt8), str(out), useCompression=True)

    io_median = median_times([read_write], 5)[0]

    started = time.perf_counter()
    client = Client(args.threads, args.backend, args.every_window)
    client("hello")
    ready = time.perf_counter() - started
    t0 = time.perf_counter()
    session = client("load", path=str(args.scan))["session"]
    load = time.perf_counter() - t0

    names = [f"object{n}" for n in range(len(targets))]
    masks = {name: np.zeros(labels.shape, bool) for name in names}
    first, to_file, inline = [], [], []
    per_object: dict[str, list[float]] = {name: [] for name in names}  # clicks after the first, any kind
    split: list[tuple[float, dict]] = []  # those clicks: time, and the worker's own split (add_point's timings_ms)
    for k in range(args.clicks):
        n = k % len(names)
        name, target = names[n], targets[n]
        if not masks[name].any() and k < len(names):
            point, positive = deepest_point(target, spacing), 1
        else:
            found = next_click(masks[name], target, spacing)
            if found is None:
                continue
            point, positive = found
        use_inline = (k // 2) % 4 != 1  # every fourth click on each object writes its mask to a file instead
        t0 = time.perf_counter()
        added = client("add_point", session=session, object=name, point=[float(v) for v in point],
                       positive=bool(positive))
        if use_inline:
            reply = client("get_mask", session=session, object=name, inline=True)
            spent = time.perf_counter() - t0
            unpacked = unpack_box(reply)
            if unpacked is not None:
                (lo, hi), part = unpacked
                masks[name][lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = part.astype(bool)
        else:
            client("get_mask", session=session, object=name, path=str(out))
            spent = time.perf_counter() - t0
            masks[name] = ijk_from_sitk_array(sitk.GetArrayFromImage(sitk.ReadImage(str(out)))).astype(bool)
            client("get_mask", session=session, object=name, inline=True)  # keep the changed box in step
        (first if k < len(names) else inline if use_inline else to_file).append(spent)
        if k >= len(names):
            per_object[name].append(spent)
            split.append((spent, added["timings_ms"]))
    client.process.stdin.close()
    client.process.wait()

    dice = [2 * (m & t).sum() / max(m.sum() + t.sum(), 1) for m, t in zip(masks.values(), targets)]
    after = inline + to_file
    print(f"scan {args.scan.name} {scan_image.GetSize()} at {tuple(round(s, 2) for s in scan_image.GetSpacing())}, "
          f"{args.threads} thread(s), {args.backend}, {'every window' if args.every_window else 'incremental'}, "
          f"{args.clicks} clicks over {len(names)} objects")
    print("| step | median ms | p95 ms | n |")
    print("|---|---|---|---|")
    print(f"| worker start to hello (torch import, model load) | {ready * 1000:.0f} | | 1 |")
    print(f"| load (read the scan) | {load * 1000:.0f} | | 1 |")
    print(f"| first click on an object (encodes its window) + inline mask | {statistics.median(first) * 1000:.0f} "
          f"| {p95(first) * 1000:.0f} | {len(first)} |")
    print(f"| click + inline mask (changed box) | {statistics.median(inline) * 1000:.0f} | {p95(inline) * 1000:.0f} "
          f"| {len(inline)} |")
    print(f"| click + mask written to a file | {statistics.median(to_file) * 1000:.0f} | {p95(to_file) * 1000:.0f} "
          f"| {len(to_file)} |")
    print(f"| every click after the first embedding | {statistics.median(after) * 1000:.0f} | {p95(after) * 1000:.0f} "
          f"| {len(after)} |")
    for (name, times), value in zip(per_object.items(), values):
        print(f"| every later click on {name} (label {value}) | {statistics.median(times) * 1000:.0f} | "
              f"{p95(times) * 1000:.0f} | {len(times)} |")
    encoding = [t for t, parts in split if parts["encode"] > 0]
    others = [t for t, parts in split if parts["encode"] == 0]
    for label, times in (("clicks that encoded a window", encoding), ("clicks that encoded none", others)):
        if times:
            print(f"| {label} | {statistics.median(times) * 1000:.0f} | {p95(times) * 1000:.0f} | {len(times)} |")
    print(f"| baseline: SimpleITK read scan + write mask, this process | {io_median * 1000:.0f} | | 5 |")
    steps = {step: statistics.median(parts[step] for _, parts in split) for step in ("encode", "decode", "resample")}
    steps["the rest"] = statistics.median(t * 1000 - sum(parts.values()) for t, parts in split)
    print("median split of a click after the first, ms: " + ", ".join(f"{k} {v:.0f}" for k, v in steps.items())
          + " (the rest: mask assembly, the session's diff, get_mask, the pipe)")
    print("final Dice per object: " + ", ".join(f"{d:.3f}" for d in dice))
    if args.out:
        def ms(values: list[float]) -> dict:
            return {"median_ms": statistics.median(values) * 1000, "p95_ms": p95(values) * 1000, "n": len(values)}

        args.out.write_text(json.dumps({
            "scan": str(args.scan), "resampled_to": args.spacing, "size": scan_image.GetSize(),
            "spacing": scan_image.GetSpacing(),
            "threads": args.threads, "backend": args.backend,
            "refinement": "every window" if args.every_window else "incremental", "clicks": args.clicks,
            "hello_ms": ready * 1000, "load_ms": load * 1000, "first_click": ms(first), "click_inline": ms(inline),
            "click_to_file": ms(to_file), "every_click_after_the_first": ms(after),
            "clicks_that_encoded": ms(encoding) if encoding else None, "clicks_that_encoded_none": ms(others),
            "median_split_ms": steps,
            "per_object": {f"{name} (label {value})": ms(times) for (name, times), value in zip(per_object.items(),
                                                                                                 values)},
            "baseline_sitk_read_write_ms": io_median * 1000, "final_dice": [float(d) for d in dice]}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
