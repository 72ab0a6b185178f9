#!/usr/bin/env python
"""Data-engine speed on one core: median seconds per training sample (128^3 crop, normalised and augmented, as
the DataLoader hands it to the model) for each kind of sample, and samples per second:

    real        a crop of a preprocessed public case
    painted     the same crop's label map painted with random intensities (synthetic.paint, synthetic_fraction)
    anatomy     a scene composed from the shape bank (anatomy_fraction)
    procedural  a scene of procedural objects only (procedural_fraction)

plus compose() alone for the two composed kinds. The training step it has to keep up with takes about 1.2 s per
batch of 2 on 2 cores (configs/default/train.yaml).

    python scripts/bench_synthetic.py [--samples 24] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from medsam3d.training.config import load_config
from medsam3d.training.data import preprocess, structures
from medsam3d.training.dataset import CropDataset, synth_config
from medsam3d.training.synth import compose

REPO = Path(__file__).resolve().parents[1]


def timed(fn, keys) -> list[float]:
    fn(keys[0])  # warm-up: loads the case, unpacks bank masks
    spent = []
    for key in keys:
        start = time.perf_counter()
        fn(key)
        spent.append(time.perf_counter() - start)
    return spent


def report(name: str, spent: list[float]) -> None:
    median = statistics.median(spent)
    p90 = sorted(spent)[int(0.9 * (len(spent) - 1))]
    print(f"{name:<22} {median:7.3f} s   p90 {p90:6.3f} s   {1 / median:6.2f} samples/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "default" / "train.yaml"))
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=str(REPO / "data" / "cache" / "preprocessed"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    data = cfg.as_dict()["data"]
    folder, records = preprocess(data["roots"], args.cache, data["spacing"], data["holdout"])
    targets = structures(records, folder, data["labels"], data["min_voxels"])
    synth = synth_config({**data, "anatomy_fraction": 0.5, "procedural_fraction": 0.5}, records, folder)
    crop, seed = 128, cfg.seed
    common = dict(affine_prob=float(data["affine_prob"]), rotate_deg=float(data["rotate_deg"]),
                  scale=float(data["scale"]), synth=synth)
    kinds = {"real": dict(), "painted": dict(synthetic_fraction=1.0), "anatomy": dict(anatomy_fraction=1.0),
             "procedural": dict(procedural_fraction=1.0)}
    step = max(len(targets) // args.samples, 1)
    keys = [((k * step) % len(targets), k) for k in range(args.samples + 1)]
    print(f"{len(records)} cases, {len(targets)} structures, bank of {len(synth.bank)} shapes; {args.threads} "
          f"thread(s), {args.samples} samples per kind, 128^3\n")
    print("per training sample (DataLoader item)")
    for name, options in kinds.items():
        dataset = CropDataset(records, folder, targets, crop, seed, **{"synthetic_fraction": 0.0, **common, **options})
        report(name, timed(dataset.__getitem__, keys))
    print("\ncompose() alone")
    for kind in ("anatomy", "procedural"):
        config = replace(synth, kind=kind, size=crop, seed=seed)
        report(kind, timed(lambda i: compose(i, config), list(range(args.samples + 1))))


if __name__ == "__main__":
    main()
