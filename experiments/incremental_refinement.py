"""Incremental refinement (``Segmenter(incremental=True)``: a click re-decodes only the windows that hold it) against
re-decoding every window, with the click protocol on training subjects (the validation cases; the held-out split
is not used to choose). python experiments/incremental_refinement.py [OUT.json]"""
import json, sys, time
from medsam3d.evaluation.evaluate import evaluate
from medsam3d.evaluation.methods import ModelMethod
from medsam3d.segmenter import Segmenter

CASES = ["ts_cta", "ts_ct"]  # training subjects of Dataset201: 56 structures, the liver of ts_ct spans six windows
rows = {}
for incremental in (False, True):
    name = "incremental" if incremental else "every window"
    seg = Segmenter(backend="onnxruntime", threads=2, incremental=incremental)
    t0 = time.time()
    results = evaluate("data/public/Dataset201_TotalSegCT", {name: ModelMethod(seg, name)}, (1, 3, 5, 10),
                       cases=CASES, log=lambda m: None, model=name)
    rows[name] = {"mean_dice": results["mean_dice"], "seconds": time.time() - t0,
                  "per_target": [(t["case"], t["label"], t["dice"]) for t in results.get("targets", [])]}
    print(name, {k: round(v, 4) for k, v in results["mean_dice"].items()}, f"{time.time() - t0:.0f} s", flush=True)
if len(sys.argv) > 1:
    open(sys.argv[1], "w").write(json.dumps(rows, indent=2) + "\n")
