"""Does the first-click loss of continued training come from the mask-scoring head's choice? The engine's snapshot
with the packaged default's ``mask_iou_head`` spliced in, against the snapshot and the default, on training
subjects (ts_cta, ts_ct: the validation cases; held-out is not used to choose).

    python experiments/splice_scoring_head.py runs/engine/snapshots/step1000.pt [OUT.json]
"""
import json, sys, tempfile, time
from pathlib import Path

import torch

from medsam3d.evaluation.evaluate import evaluate
from medsam3d.evaluation.methods import ModelMethod
from medsam3d.segmenter import Segmenter

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "medsam3d" / "weights"
CASES = ["ts_cta", "ts_ct"]
snapshot = Path(sys.argv[1])
engine = torch.load(snapshot, weights_only=True)["model"]
default = torch.load(DEFAULT / "default.pt", weights_only=True)["model"]
spliced = {k: (default[k] if k.startswith("mask_decoder.mask_iou_head.") else v) for k, v in engine.items()}
rows = {}
with tempfile.TemporaryDirectory() as tmp:
    torch.save({"model": spliced}, Path(tmp) / "spliced.pt")
    arms = {"default": DEFAULT / "default.pt", snapshot.stem: snapshot,
            f"{snapshot.stem} + default scoring head": Path(tmp) / "spliced.pt"}
    for name, weights in arms.items():
        seg = Segmenter(model=str(DEFAULT / "default.yaml"), checkpoint=weights, threads=2)
        t0 = time.time()
        results = evaluate(REPO / "data/public/Dataset201_TotalSegCT", {name: ModelMethod(seg, name)},
                           (1, 3, 5, 10), cases=CASES, log=lambda m: None, model=name)
        rows[name] = results["mean_dice"]
        print(name, {k: round(v, 4) for k, v in results["mean_dice"].items()}, f"{time.time() - t0:.0f} s", flush=True)
if len(sys.argv) > 2:
    Path(sys.argv[2]).write_text(json.dumps({"cases": CASES, "snapshot": str(snapshot), "mean_dice": rows}, indent=2))
