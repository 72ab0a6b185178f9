"""The packaged default on the gate's held-out suites, model only, with the code as it is now, against the numbers
recorded in medsam3d/weights/default.json.  python experiments/check_held_out.py [THREADS]"""
import json, sys, time
from medsam3d.evaluation.gate import REPO, load_gate_config, model_dice, run_suites
from medsam3d.segmenter import Segmenter
config = load_gate_config(REPO / "configs" / "gate.yaml")
recorded = json.loads((REPO / "medsam3d" / "weights" / "default.json").read_text())["heldout"]["dice"]
t0 = time.time()
results = run_suites(Segmenter("default", threads=int(sys.argv[1]) if len(sys.argv) > 1 else 2), config, baselines=False, log=lambda m: None)
now = model_dice(results, config.clicks)
for k in now:
    print(f"@{k}: now {now[k]:.6f} recorded {recorded[str(k)]:.6f} diff {now[k] - recorded[str(k)]:+.2e}")
print(f"{time.time() - t0:.0f} s")
