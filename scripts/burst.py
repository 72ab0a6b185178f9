#!/usr/bin/env python
"""A training burst on one borrowed CUDA device, moved there and back without edits.

Here (with the public data built: bash scripts/fetch_public_data.sh):

    python scripts/burst.py pack                       # -> burst/ (git-ignored, < 60 MB): data, config, start weights

There (the device tool, carry=["burst"]; the machine has torch but not MONAI, whose wheel pack put in
burst/wheels; SimpleITK is not needed):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site burst/wheels/*.whl && \
        PYTHONPATH=/tmp/site python3 scripts/burst.py run --minutes 8 --out $OUT/run

Back here: `python scripts/promote.py <the fetched run folder>` evaluates it on the real held-out split (the gate).

`pack` writes burst/data/ (every training case of configs/default/train.yaml in model space, float16 images,
compressed, with the shape bank of the synthetic-anatomy engine), burst/heldout/ (the held-out gate cases in model
space, for the end-of-run preview only: never trained on), burst/train.yaml (the resolved config: data.packed,
the start weights: the packaged default, which travels with the repository, or --start RUN, packed as
burst/start.pt). `run` trains from them (or resumes its own --work), writes model.pt (float16) + model.yaml + config.yaml + metrics.csv +
summary.json into --out (at most 8 files, each under 16 MB, as the device tool brings back), and works on CPU too
(the tests run two steps of it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a plain checkout on the device machine, where medsam3d is not installed
LIMIT_MB = 60
WHEELS = ("monai",)  # what training needs beyond the device machine's own packages


def pack(args: argparse.Namespace) -> int:
    import torch

    from medsam3d.evaluation.gate import load_gate_config
    from medsam3d.models import half_state, read_state_dict
    from medsam3d.store import PACKAGED
    from medsam3d.training.config import load_config
    from medsam3d.training.data import preprocess
    from medsam3d.training.synth import bank_for

    cfg = load_config(args.config, args.set)
    data = cfg.data
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    (out / "heldout").mkdir()
    cache = Path(data.cache or REPO / "runs" / "burst_cache")
    folder, records = preprocess(data.roots, cache, data.spacing, data.holdout, log=print)
    _pack_cases(folder, records, out / "data")
    bank_for(records, folder, data.holdout, data.spacing, out / "data" / "shapes_v2.npz", log=print)
    gate = load_gate_config(args.gate)  # checks that every gate case is held out
    gate_cases = {c for suite in gate.suites for c in suite.cases}
    roots = sorted({str(suite.dataset) for suite in gate.suites})
    others = [c for r in roots for c in _case_ids(r) if c not in gate_cases]  # left out: only gate cases packed
    hfolder, hrecords = preprocess(roots, cache, data.spacing, others, log=print)
    _pack_cases(hfolder, hrecords, out / "heldout")
    if args.start:  # a run's weights travel in the pack; the packaged default travels with the repository
        start_yaml = args.start / "model.yaml"
        torch.save({"model": half_state(read_state_dict(args.start / "model.pt"))}, out / "start.pt")
        start = "start.pt"
    else:
        start_yaml, start = PACKAGED / "default.yaml", "default"
    spec = yaml.safe_load(start_yaml.read_text())
    packed = cfg.as_dict()
    packed["model"] = {"name": spec.pop("model"), "config": spec, "checkpoint": start}
    packed["data"].update({"roots": [], "packed": "data", "cache": None, "workers": args.workers})
    (out / "train.yaml").write_text(yaml.safe_dump(packed, sort_keys=False))
    if not args.no_wheels:
        _wheels(out / "wheels")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    print(f"packed {len(records)} training case(s) and {len(hrecords)} held-out case(s) into {out}: {size:.1f} MB")
    if size > LIMIT_MB:
        print(f"burst: error: {out} is {size:.1f} MB, over {LIMIT_MB} MB", file=sys.stderr)
        return 2
    return 0


def _wheels(folder: Path) -> None:
    """Pure-Python wheels of the installed versions of WHEELS, for a machine that cannot reach PyPI."""
    import subprocess
    from importlib.metadata import version

    folder.mkdir()
    for name in WHEELS:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        "-d", str(folder), f"{name}=={version(name)}"], check=True)


def _case_ids(root: str) -> list[str]:
    from medsam3d.datasets import discover

    return [c.case_id for c in discover(root)]


def _pack_cases(folder: Path, records: list[dict], out: Path) -> None:
    """Model-space cases as .npz that np.load reads: CT as whole HU (int16) in the range the model's intensity
    handling keeps, MR as float16, the smallest integer label; LZMA, a third smaller than savez_compressed here."""
    from medsam3d.intensity import CT_HU_RANGE, modality_of

    for rec in records:
        data = np.load(folder / rec["file"])
        image, label = data["image"], data["label"]
        if modality_of(rec.get("modality", "unknown")) == "ct":
            image = np.round(np.clip(image, *CT_HU_RANGE)).astype(np.int16)
        else:
            image = image.astype(np.float16)
        label = label.astype(np.uint8) if label.max() < 256 else label
        with zipfile.ZipFile(out / rec["file"], "w", compression=zipfile.ZIP_LZMA) as archive:
            for name, array in (("image", image), ("label", label)):
                with archive.open(f"{name}.npy", "w") as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(array))
    (out / "cases.json").write_text(json.dumps([{**r, "source": Path(r["source"]).name} for r in records], indent=1))


def run(args: argparse.Namespace) -> int:
    import torch

    from medsam3d.models import build_model, half_state, read_state_dict
    from medsam3d.training.config import load_config
    from medsam3d.training.data import packed_cases
    from medsam3d.training.trainer import run_interactive
    from medsam3d.training.validate import validate

    pack_dir = args.pack.resolve()
    work = args.work
    resume = (work / "checkpoints" / "last.pt").is_file()
    from medsam3d.store import PACKAGED

    start = yaml.safe_load((pack_dir / "train.yaml").read_text())["model"]["checkpoint"]
    start = PACKAGED / "default.pt" if start == "default" else pack_dir / start
    overrides = [f"data.packed={pack_dir / 'data'}", f"model.checkpoint={start}",
                 f"train.max_minutes={args.minutes}", f"train.steps={args.steps}",
                 f"train.batch_size={args.batch_size}", f"data.workers={args.workers}", *args.set]
    cfg = load_config(pack_dir / "train.yaml", overrides)
    began = time.time()
    run_interactive(cfg, work, resume=resume, kind="finetune")
    trained = time.time() - began
    spec = yaml.safe_load((work / "model.yaml").read_text())
    name = spec.pop("model")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(name, checkpoint=work / "model.pt", device=str(device), **spec)
    folder, records = packed_cases(pack_dir / "heldout")
    preview = validate(model, folder, records, [1, 5], device, min_voxels=args.min_voxels)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": half_state(read_state_dict(work / "model.pt"))}, args.out / "model.pt")
    for name_ in ("model.yaml", "config.yaml", "metrics.csv"):
        shutil.copy(work / name_, args.out / name_)
    steps = int(torch.load(work / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["step"])
    summary = {"device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
               "minutes_budget": args.minutes, "seconds_training": round(trained, 1), "steps": steps,
               "batch_size": args.batch_size, "heldout_preview": preview}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "heldout_preview"}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: data, config and start weights into one folder")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "burst" / "train.yaml")
    p.add_argument("--out", type=Path, default=REPO / "burst")
    p.add_argument("--gate", type=Path, default=REPO / "configs" / "gate.yaml", help="held-out suites to pack")
    p.add_argument("--start", type=Path, help="a run folder to start from (default: the packaged default)")
    p.add_argument("--workers", type=int, default=6, help="data workers on the device machine (16 cores)")
    p.add_argument("--set", action="append", default=[], help="config override key.sub=value")
    p.add_argument("--no-wheels", action="store_true", help="do not download the wheels (tests, offline)")
    r = sub.add_parser("run", help="there: train for --minutes, evaluate, write --out")
    r.add_argument("--pack", type=Path, default=REPO / "burst")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--work", type=Path, default=Path("/tmp/medsam3d_burst"),
                   help="checkpoints (kept out of --out: the optimiser state is over the 16 MB a file may bring back)")
    r.add_argument("--minutes", type=float, default=8.0)
    r.add_argument("--steps", type=int, default=3000, help="the schedule's length; the budget may stop it first")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--workers", type=int, default=6)
    r.add_argument("--min-voxels", type=int, default=200)
    r.add_argument("--set", action="append", default=[], help="config override key.sub=value")
    args = parser.parse_args()
    return pack(args) if args.command == "pack" else run(args)


if __name__ == "__main__":
    sys.exit(main())
