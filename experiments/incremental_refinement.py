"""Incremental refinement (``Segmenter(incremental=True)``: a click re-decodes only the windows it needs) against
re-decoding every window, with the click protocol on training subjects (the validation cases; the held-out split
is not used to choose).

    python experiments/incremental_refinement.py [OUT.json] [--arms "every window;incremental;..."]

Arms: "every window", "incremental" (the Segmenter's rule), and for the record of what was tried,
"incremental, positive in every window" (a positive click re-decodes every window holding it, as a negative one
does), "incremental, negative in every window" (a negative click re-decodes every window holding it, not only
those whose mask has the clicked voxel) and "incremental, replan outside" (a click outside every window plans and
grows every window again)."""
import argparse, json, time
from unittest import mock

from medsam3d.evaluation.evaluate import evaluate
from medsam3d.evaluation.methods import ModelMethod
from medsam3d.preprocess import Window
from medsam3d.segmenter import Segmenter

CASES = ["ts_cta", "ts_ct"]  # training subjects of Dataset201: 56 structures, the liver of ts_ct spans six windows
original_plan = Segmenter._incremental_plan


def positive_in_every_window(self, prompts):
    plan = original_plan(self, prompts)
    if plan is None or not len(prompts.points) or prompts.labels[prompts.newest] != 1:
        return plan
    newest = self.volume.ijk_to_lps(prompts.points[prompts.newest][None])
    holding = [Window(c, self.size) for c in self._memory if Window(c, self.size).contains(newest)]
    if not holding:
        return plan
    return {c: a for c, a in self._memory.items() if c not in {w.center_lps for w in holding}}, holding


def negative_in_every_window(self, prompts):
    plan = original_plan(self, prompts)
    if plan is None or prompts.labels[prompts.newest] != 0:
        return plan
    newest = self.volume.ijk_to_lps(prompts.points[prompts.newest][None])
    holding = [Window(c, self.size) for c in self._memory if Window(c, self.size).contains(newest)]
    kept = {c: a for c, a in self._memory.items() if c not in {w.center_lps for w in holding}}
    return (kept, holding) if kept else None


def replan_outside(self, prompts):
    plan = original_plan(self, prompts)
    if plan is not None and not any(w.center_lps in self._memory for w in plan[1]):
        return None  # a click outside every window: plan and grow every window again
    return plan


ARMS = {"every window": (False, None), "incremental": (True, None),
        "incremental, positive in every window": (True, positive_in_every_window),
        "incremental, negative in every window": (True, negative_in_every_window),
        "incremental, replan outside": (True, replan_outside)}

parser = argparse.ArgumentParser()
parser.add_argument("out", nargs="?")
parser.add_argument("--arms", default="every window;incremental", help="arm names, separated by ;")
args = parser.parse_args()
rows = {}
for name in args.arms.split(";"):
    incremental, rule = ARMS[name]
    seg = Segmenter(backend="onnxruntime", threads=2, incremental=incremental)
    t0 = time.time()
    with mock.patch.object(Segmenter, "_incremental_plan", rule or original_plan):
        results = evaluate("data/public/Dataset201_TotalSegCT", {name: ModelMethod(seg, name)}, (1, 3, 5, 10),
                           cases=CASES, log=lambda m: None, model=name)
    rows[name] = {"mean_dice": results["mean_dice"], "seconds": time.time() - t0,
                  "per_structure": [{"case": s.get("case"), "name": s.get("name"), "dice": s.get("dice")}
                                    for s in results["per_structure"]]}
    print(name, {k: round(v, 4) for k, v in results["mean_dice"].items()}, f"{time.time() - t0:.0f} s", flush=True)
if args.out:
    open(args.out, "w").write(json.dumps(rows, indent=2) + "\n")
