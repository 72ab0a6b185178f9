#!/usr/bin/env python
"""Tune the classical baselines' few parameters on TRAINING cases only, with the evaluator's own click protocol.

    python scripts/tune_baselines.py                       # both baselines, the default grids below
    python scripts/tune_baselines.py --method region_growing --grid multiplier=1.5,2,2.5,3 --grid margin_mm=40,80

Each setting is run as one method through ``evaluate`` on every training CT structure chosen below (the clicks
are the protocol's, so each setting sees the clicks its own predictions call for), and the script prints mean
Dice at 1/3/5/10 clicks, their average (the score settings are ranked by), whether the means never fall as clicks
are added, and the seconds spent. Held-out subjects (``configs/data/public_split.json``) are refused. The values
chosen are written, with the reason, into ``medsam3d/evaluation/protocol.py`` (``BASELINES``) by hand.

Grids are searched one parameter at a time from the classes' defaults (coordinate search), in the order given;
the runs behind the chosen values are quoted in ``BASELINES``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

# one BLAS thread: the random walker's solver makes thousands of tiny BLAS calls, which a second thread only
# slows down (8x on a busy 2-core machine); set before numpy loads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# (dataset, case, label stride): every label of the small cases, every 4th of ts_ct's 61 (3 mm, whole body)
TRAINING = [("Dataset201_TotalSegCT", "ts_cta", 1), ("Dataset206_ChestCT", "slicer_ctchest4", 1),
            ("Dataset201_TotalSegCT", "ts_ct", 4)]
GRIDS = {
    "region_growing": {"multiplier": [1.5, 2.0, 2.5, 3.0, 4.0], "margin_mm": [30, 60, 100, 150],
                       "spacing_mm": [1.5, 3.0]},
    "random_walker": {"beta": [30, 130, 500, 2000, 8000, 32000], "margin_mm": [50, 60, 100, 150],
                      "seed_radius_mm": [3.0, 5.0, 6.0, 9.0]},
}


def label_subset(dataset: Path, case: str, stride: int) -> list[int]:
    from medsam3d.io import read_volume

    values = np.unique(read_volume(dataset / "labelsTr" / f"{case}.nii.gz").array)
    return [int(v) for v in values[values > 0]][::stride]


def run(method_name: str, settings: list[dict], args) -> list[tuple[dict, float]]:
    from medsam3d.evaluation.evaluate import evaluate
    from medsam3d.evaluation.methods import RandomWalker, RegionGrowing

    cls = {"region_growing": RegionGrowing, "random_walker": RandomWalker}[method_name]
    out = []
    for setting in settings:
        name = " ".join(f"{k}={v}" for k, v in setting.items()) or "defaults"
        per_click, seconds, n = [], 0.0, 0
        start = time.perf_counter()
        for dataset, case, stride in args.cases:
            root = REPO / "data/public" / dataset
            results = evaluate(root, {name: cls(**setting)}, args.clicks, cases=[case], model=None,
                               label_values=label_subset(root, case, stride), log=lambda m: None)
            means = results["baselines"][name]["mean_dice"]
            count = results["baselines"][name]["n_scored"]
            per_click.append((np.array([means[str(k)] for k in args.clicks]), count))
            n += count
        seconds = time.perf_counter() - start
        pooled = sum(v * c for v, c in per_click) / n  # mean over all structures
        mean = float(pooled.mean())
        rising = bool(np.all(np.diff(pooled) >= -1e-9))
        print(f"{method_name:15s} {name:45s} Dice " + " ".join(f"{v:.3f}" for v in pooled)
              + f" | mean {mean:.3f} | {'non-decreasing' if rising else 'FALLS'} | {n} structures {seconds:.0f} s",
              flush=True)
        out.append((setting, mean))
    return out


def main() -> None:
    from medsam3d.datasets import heldout_cases

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=list(GRIDS), action="append")
    parser.add_argument("--grid", action="append", default=[], help="NAME=V1,V2,.. (replaces that default grid)")
    parser.add_argument("--clicks", default="1,3,5,10")
    parser.add_argument("--quick", action="store_true", help="ts_cta and slicer_ctchest4 only")
    args = parser.parse_args()
    args.clicks = [int(c) for c in args.clicks.split(",")]
    args.cases = TRAINING[:2] if args.quick else TRAINING
    refused = {c for _, c, _ in args.cases} & heldout_cases()
    if refused:
        raise SystemExit(f"held-out case(s) {sorted(refused)} must not be tuned on")
    warnings.simplefilter("ignore")
    for method_name in args.method or list(GRIDS):
        grid = dict(GRIDS[method_name])
        for item in args.grid:
            key, values = item.split("=")
            grid[key] = [type_of(v) for v in values.split(",")]
        best: dict = {}
        for key, values in grid.items():  # coordinate search: one parameter at a time, the others at their best
            tried = run(method_name, [{**best, key: v} for v in values], args)
            best[key] = max(tried, key=lambda t: t[1])[0][key]
            print(f"{method_name}: best {key} = {best[key]}", flush=True)
        print(f"{method_name}: chosen {best}")


def type_of(text: str):
    return int(text) if text.isdigit() else float(text)


if __name__ == "__main__":
    main()
