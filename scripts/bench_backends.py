#!/usr/bin/env python
"""The CPU path, timed: each model under each backend (torch, onnxruntime fp32, onnxruntime int8) at 128^3.

    python scripts/bench_backends.py                       # every model, 2 threads; pause background training
    python scripts/bench_backends.py --models default --repeats 7 --out docs/experiments/backends.json

Prints medians of: the image encoder, one click's decoder (a click with the previous mask, as a refinement),
the start-up + import of each backend in a fresh process (to a ready model), and `medsam3d segment` end to end
on real CTs against reading and writing the same scan with SimpleITK in a fresh process, in the same run.
sam-med3d and fastsam3d are timed with random weights (their published weights cannot be downloaded here): the
timing does not depend on the values. int8 is onnxruntime's dynamic quantisation (`medsam3d export onnx
--quantize int8`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchutil import median_times  # noqa: E402

SCANS = [REPO / "data" / "example_ct_sm.nii.gz",  # 122 x 101 x 30 at 3 mm, the README's example
         REPO / "data" / "public" / "Dataset201_TotalSegCT" / "imagesTr" / "ts_ct_0000.nii.gz"]


def build(name: str):
    """-> a PromptableModel3D: the packaged default, or a registry model with random weights (timing only)."""
    from medsam3d.backends.torch_backend import load_model
    from medsam3d.models import build_model

    if name == "default":
        return load_model("default", None, "cpu")[0]
    return build_model(name).eval()


def time_model(name: str, threads: int, repeats: int, work: Path) -> dict:
    import torch

    from medsam3d.backends.onnx_backend import OnnxBackend
    from medsam3d.backends.torch_backend import TorchBackend
    from medsam3d.export import export_onnx

    torch.set_num_threads(threads)
    model = build(name)
    rng = np.random.default_rng(0)
    crop = rng.standard_normal((model.config.img_size,) * 3).astype(np.float32)
    backends = {"torch": TorchBackend(model)}
    for quantize in (None, "int8"):
        folder = work / f"{name}-{quantize or 'fp32'}"
        export_onnx(model, folder, quantize=quantize)
        backends[f"onnxruntime {quantize or 'fp32'}"] = OnnxBackend(folder, threads)
    size = backends["torch"].low_res_size
    click = np.array([[64.0, 64.0, 64.0]]), np.array([1])
    previous = rng.standard_normal((size,) * 3).astype(np.float32)
    row = {}
    features = {kind: b.encode(crop) for kind, b in backends.items()}
    encode = median_times([lambda b=b: b.encode(crop) for b in backends.values()], repeats)
    decode = median_times([lambda k=k, b=b: b.decode(features[k], *click, None, previous, False)
                           for k, b in backends.items()], repeats * 3)
    for (kind, _), enc, dec in zip(backends.items(), encode, decode):
        row[kind] = {"encoder_s": enc, "decoder_s": dec}
    return row


def startup(threads: int, repeats: int) -> dict:
    """Fresh process -> backend ready (imports, model loaded, sessions made), median wall time."""
    code = {"python alone": "pass",
            "torch": f"from medsam3d.backends import open_backend; open_backend('torch', threads={threads})",
            "onnxruntime": f"from medsam3d.backends import open_backend; open_backend('onnxruntime', threads={threads})"}
    runs = median_times([lambda c=c: subprocess.run([sys.executable, "-c", c], check=True) for c in code.values()],
                        repeats)
    return dict(zip(code, runs))


def segment_end_to_end(threads: int, repeats: int, work: Path) -> dict:
    """`medsam3d segment` per backend, against SimpleITK reading + writing the same scan, all fresh processes: the
    README's liver, and on a 512^2 CT an organ that fits one 128^3 window (spleen) and one that spans six (liver)."""
    cases = [(SCANS[0], "liver", "91,52,18")]
    if SCANS[1].is_file():
        cases += [(SCANS[1], "spleen", _centre_click(SCANS[1], 1)), (SCANS[1], "liver", _centre_click(SCANS[1], 5))]
    out = {}
    for scan, organ, click in cases:
        sitk_io = (f"import SimpleITK as sitk; i = sitk.ReadImage({str(scan)!r}); "
                   f"sitk.WriteImage(sitk.Cast(i > 0, sitk.sitkUInt8), {str(work / 'io.nii.gz')!r})")
        commands = {"simpleitk read + write": [sys.executable, "-c", sitk_io]}
        for backend in ("torch", "onnxruntime"):
            commands[f"segment --backend {backend}"] = [
                sys.executable, "-m", "medsam3d", "segment", str(scan), "--point", click, "-o",
                str(work / f"{backend}.nii.gz"), "--backend", backend, "--threads", str(threads), "-q"]
        times = median_times([lambda c=c: subprocess.run(c, check=True) for c in commands.values()], repeats)
        row = dict(zip(commands, times))
        row["onnxruntime over simpleitk"] = row["segment --backend onnxruntime"] - row["simpleitk read + write"]
        out[f"{scan.name} {organ}"] = row
    return out


def _centre_click(scan: Path, label: int) -> str:
    """The deepest voxel of a TotalSegmentator CT's label (5 liver, 1 spleen), as the evaluation protocol clicks."""
    from medsam3d.evaluation.protocol import deepest_point
    from medsam3d.io import read_volume

    labels = read_volume(str(scan).replace("imagesTr", "labelsTr").replace("_0000.nii.gz", ".nii.gz")).array
    return ",".join(str(int(v)) for v in deepest_point(labels == label))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="default,fastsam3d,sam-med3d")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--segment-only", action="store_true", help="only the end-to-end `segment` timings")
    args = parser.parse_args()
    results = {"threads": args.threads, "repeats": args.repeats, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in [] if args.segment_only else args.models.split(","):
            results["models"][name] = row = time_model(name, args.threads, args.repeats, work)
            base = row["torch"]
            for kind, t in row.items():
                print(f"{name:10s} {kind:18s} encoder {t['encoder_s'] * 1e3:8.1f} ms "
                      f"({base['encoder_s'] / t['encoder_s']:.2f}x torch)   decoder {t['decoder_s'] * 1e3:7.1f} ms "
                      f"({base['decoder_s'] / t['decoder_s']:.2f}x torch)", flush=True)
        results["startup_s"] = {} if args.segment_only else startup(args.threads, args.repeats)
        for kind, t in results["startup_s"].items():
            print(f"start-up to a ready backend, {kind:12s} {t:.2f} s", flush=True)
        results["segment_s"] = segment_end_to_end(args.threads, args.repeats, work)
        for scan, row in results["segment_s"].items():
            print(scan + ": " + ", ".join(f"{k} {v:.2f} s" for k, v in row.items()), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
