#!/usr/bin/env python
"""Time ``medsam3d evaluate`` on one large structure of a whole-scan-sized CT: the model and both baselines,
clicks 1,3,5,10, as the evaluator runs them.

    python scripts/bench_evaluate.py                          # this checkout, median of --repeats runs
    python scripts/bench_evaluate.py --before HEAD --repeats 3 --before-repeats 1   # against the committed evaluator
    python scripts/bench_evaluate.py --profile                # where the time goes (cProfile, one run)
    python scripts/bench_evaluate.py --before HEAD --profile  # ... in the committed evaluator

The scan: a real CT of ours (``ts_ct``, 122x101x112 at 3 mm, a training case) resampled with SimpleITK onto a
512x512x133 grid (square pixels of 0.715 mm, 2.53 mm slices, padded with air), linear for the image, nearest
for the labels; the structure is its liver (1.6 l, 1.2 M voxels on that grid). Each side runs in its own
process with its own ``medsam3d`` on the path. ``--before REV`` is this checkout's package with the evaluator's
modules (``EVALUATOR``) as they were at git revision REV, so the two sides differ in the evaluator alone; the
model's Dice and NSD at every click count are compared between them and must be equal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "data/public/Dataset201_TotalSegCT"
EVALUATOR = ["medsam3d/evaluation/evaluate.py", "medsam3d/evaluation/methods.py", "medsam3d/evaluation/metrics.py",
             "medsam3d/evaluation/protocol.py"]


def tree_at(rev: str) -> Path:
    """A copy of this checkout's package with the evaluator's modules from git revision ``rev``."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    shutil.copytree(REPO / "medsam3d", root / "medsam3d", ignore=shutil.ignore_patterns("__pycache__"))
    for path in EVALUATOR:
        text = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True,
                              text=True).stdout
        (root / path).write_text(text)
    return root


def default_model() -> tuple[str, str]:
    """The packaged default's YAML and weights as explicit paths (code from before it shipped loads them too)."""
    for folder, stem in ((REPO / "medsam3d/weights", "default"), (REPO / "checkpoints", "medsam3d-tiny-wip")):
        if (folder / f"{stem}.pt").is_file():
            return str(folder / f"{stem}.yaml"), str(folder / f"{stem}.pt")
    raise SystemExit("no model weights found (medsam3d/weights/default.pt or checkpoints/medsam3d-tiny-wip.pt)")


def build_case(root: Path, case: str, label: int, shape=(512, 512, 133)) -> Path:
    """``case`` and its ``label`` resampled onto ``shape`` (i, j, k) -> an nnU-Net-layout dataset at ``root``."""
    import numpy as np
    import SimpleITK as sitk

    if (root / "dataset.json").is_file():
        return root
    image = sitk.ReadImage(str(SOURCE / "imagesTr" / f"{case}_0000.nii.gz"))
    labels = sitk.ReadImage(str(SOURCE / "labelsTr" / f"{case}.nii.gz"))
    extent = np.array(image.GetSize()) * np.array(image.GetSpacing())  # mm along i, j, k
    in_plane = extent[:2].max() / shape[0]
    spacing = np.array([in_plane, in_plane, extent[2] / shape[2]])
    # the new grid's centre is the old grid's centre (same direction)
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(centre) - direction @ (spacing * (np.array(shape) - 1) / 2)
    grid = sitk.Image([int(n) for n in shape], sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetOrigin(origin.tolist())
    grid.SetDirection(image.GetDirection())
    new_image = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkInt16)
    new_labels = sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    sitk.WriteImage(new_image, str(root / "imagesTr" / "bench_0000.nii.gz"))
    sitk.WriteImage(new_labels == label, str(root / "labelsTr" / "bench.nii.gz"))
    names = json.loads((SOURCE / "dataset.json").read_text())["labels"]
    name = next(k for k, v in names.items() if v == label)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, name: 1}}))
    return root


def worker(args) -> dict:
    """One evaluation in this process (whichever ``medsam3d`` is importable) -> timings and the model's numbers."""
    import medsam3d.evaluation.evaluate as ev
    from medsam3d.evaluation.methods import ModelMethod, RandomWalker, RegionGrowing
    from medsam3d.segmenter import Segmenter

    spent: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
        return wrapper

    for name in ("next_click", "deepest_point", "dice", "nsd"):  # the protocol's steps, as evaluate calls them
        if hasattr(ev, name):
            setattr(ev, name, timed(name, getattr(ev, name)))
    segmenter = Segmenter(model=args.model, checkpoint=args.checkpoint, threads=args.threads)
    methods = {"model": ModelMethod(segmenter, "model"), "region_growing": RegionGrowing(),
               "random_walker": RandomWalker()}
    for name, method in methods.items():
        method.predict = timed(name, method.predict)
    start, cpu = time.perf_counter(), time.process_time()
    results = ev.evaluate(args.root, methods, clicks=[1, 3, 5, 10], log=lambda m: None)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    row = results["per_structure"][0]
    return {"seconds": total, "cpu_seconds": cpu, "spent": spent, "model": {"dice": row["dice"], "nsd": row["nsd"]},
            "baselines": {b: v["dice"] for b, v in row["baselines"].items()}}


def run_side(tree: Path, args, repeats: int) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore"}
    if args.blas_threads:
        env["OPENBLAS_NUM_THREADS"] = args.blas_threads
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--root", str(args.root),
               "--model", args.model, "--threads", str(args.threads)]
    if args.checkpoint:
        command += ["--checkpoint", args.checkpoint]
    runs = []
    for _ in range(repeats):
        done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{tree}: worker failed\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def summary(label: str, runs: list[dict]) -> float:
    seconds = statistics.median(r["seconds"] for r in runs)
    parts = {k: statistics.median(r["spent"].get(k, 0.0) for r in runs) for k in runs[0]["spent"]}
    cpu = ", ".join(f"{r['cpu_seconds']:.0f}" for r in runs if "cpu_seconds" in r) or "not recorded"
    print(f"{label}: median {seconds:.1f} s over {len(runs)} run(s) "
          f"({', '.join(f'{s:.1f}' for s in (r['seconds'] for r in runs))}); CPU time {cpu} s")
    print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))
    print(f"  model Dice {runs[0]['model']['dice']}  NSD {runs[0]['model']['nsd']}")
    for name, dice in runs[0]["baselines"].items():
        print(f"  {name} Dice {dice}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model, checkpoint = default_model()
    parser.add_argument("--root", type=Path, default=REPO / "data/bench/Dataset990_BenchLiver")
    parser.add_argument("--case", default="ts_ct")
    parser.add_argument("--label", type=int, default=5, help="label value in --case (5: liver)")
    parser.add_argument("--model", default=model)
    parser.add_argument("--checkpoint", default=checkpoint)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", help="git revision of the evaluator to compare with (e.g. HEAD)")
    parser.add_argument("--before-repeats", type=int, default=1)
    parser.add_argument("--before-json", type=Path, help="keep the before side's runs here; reuse them if present")
    parser.add_argument("--blas-threads", default="1", help="OPENBLAS_NUM_THREADS for both sides ('' leaves it "
                        "unset); the random walker's solver makes thousands of tiny BLAS calls that a second "
                        "thread slows down on a busy machine")
    parser.add_argument("--profile", action="store_true", help="cProfile one run in this process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    build_case(args.root, args.case, args.label)
    print(f"case: {args.case} label {args.label} on 512x512x133; model {args.model}; {args.threads} threads; "
          f"OPENBLAS_NUM_THREADS={args.blas_threads or 'unset'}")
    before_tree = tree_at(args.before) if args.before else None
    if args.profile:
        if before_tree is not None:  # profile the old evaluator in a process of its own
            env = {**os.environ, "PYTHONPATH": str(before_tree)}
            argv = [a for a in sys.argv[1:] if a not in ("--before", args.before)]
            raise SystemExit(subprocess.run([sys.executable, __file__, *argv], env=env).returncode)
        import cProfile
        import pstats
        import warnings

        warnings.simplefilter("ignore")
        profiler = cProfile.Profile()
        profiler.enable()
        out = worker(args)
        profiler.disable()
        print(json.dumps(out, indent=1))
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        return
    before = None
    if before_tree is not None:
        if args.before_json is not None and args.before_json.is_file():
            before_runs = json.loads(args.before_json.read_text())
        else:
            before_runs = run_side(before_tree, args, args.before_repeats)
            if args.before_json is not None:
                args.before_json.write_text(json.dumps(before_runs))
        before = summary(f"before (evaluator at {args.before})", before_runs)
    after_runs = run_side(REPO, args, args.repeats)
    after = summary("after (this checkout)", after_runs)
    if before is not None:
        same = all(r["model"] == before_runs[0]["model"] for r in after_runs)
        print(f"speed-up {before / after:.1f}x; model Dice and NSD identical before and after: {same}")


if __name__ == "__main__":
    main()
