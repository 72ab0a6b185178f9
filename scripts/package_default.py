#!/usr/bin/env python
"""Package a trained run as the default model that ships inside medsam3d (``medsam3d/weights/``).

    python scripts/package_default.py runs/default [--fp16]
    python scripts/package_default.py runs/default --fp16 --to checkpoints --name medsam3d-tiny-wip

Writes ``medsam3d/weights/default.pt`` (model weights only; fp16 halves the size and loads into fp32),
``default.json`` (architecture, non-default config, sha256, and where it came from) and ``default.yaml`` (the
whole architecture, as ``--model`` takes it). The model card in docs/ is written by
hand from the evaluation results.

``--to``/``--name`` write the same pair elsewhere instead: how a run that is not (yet) good enough to ship is
kept in the repository, so that the next session can continue from it (``runs/`` does not outlive a session).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
import yaml

from medsam3d.models import build_model, config_dict
from medsam3d.models.config import make_config

WEIGHTS = Path(__file__).resolve().parents[1] / "medsam3d" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a training --out folder holding model.pt and model.yaml")
    parser.add_argument("--fp16", action="store_true", help="store weights in float16")
    parser.add_argument("--to", type=Path, default=WEIGHTS, help="folder to write into (default: the package's)")
    parser.add_argument("--name", default="default", help="file stem of the .pt and .json written")
    parser.add_argument("--about", default="medsam3d's default: see docs/MODEL_CARD.md")
    args = parser.parse_args()
    spec = yaml.safe_load((args.run / "model.yaml").read_text())
    name = spec.pop("model")
    state = torch.load(args.run / "model.pt", map_location="cpu", weights_only=True)["model"]
    build_model(name, checkpoint=state, **spec)  # strict check before shipping
    if args.fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    args.to.mkdir(parents=True, exist_ok=True)
    target = args.to / f"{args.name}.pt"
    torch.save({"model": state}, target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    defaults = config_dict(make_config(name, {}))  # lists, as in model.yaml
    config = {k: v for k, v in spec.items() if defaults.get(k) != v}
    card = {"model": name, "config": config, "file": target.name, "sha256": digest,
            "size_mb": round(target.stat().st_size / 1e6, 2), "trained_by": str(args.run / "config.yaml"),
            "about": args.about}
    (args.to / f"{args.name}.json").write_text(json.dumps(card, indent=2) + "\n")
    # the whole architecture beside it, for `segment --model NAME.yaml --checkpoint NAME.pt`
    (args.to / f"{args.name}.yaml").write_text(yaml.safe_dump({"model": name, **spec}, sort_keys=False))
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
