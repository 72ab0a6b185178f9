"""The packaged default on the gate's held-out suites, model only, with the code as it is now, against the numbers
recorded in medsam3d/weights/default.json.

    python experiments/check_held_out.py [THREADS] [BACKEND] [MODEL]
    python experiments/check_held_out.py 2 onnxruntime                  # the packaged ONNX bundle
    python experiments/check_held_out.py 2 onnxruntime /tmp/default_int8  # an exported bundle (int8)
    MEDSAM3D_INCREMENTAL=1 python experiments/check_held_out.py 2 onnxruntime  # serve's incremental refinement
"""
import json, os, sys, time
from medsam3d.evaluation.gate import REPO, load_gate_config, model_dice, run_suites
from medsam3d.segmenter import Segmenter
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
backend = sys.argv[2] if len(sys.argv) > 2 else "torch"
model = sys.argv[3] if len(sys.argv) > 3 else "default"
config = load_gate_config(REPO / "configs" / "gate.yaml")
recorded = json.loads((REPO / "medsam3d" / "weights" / "default.json").read_text())["heldout"]["dice"]
t0 = time.time()
incremental = os.environ.get("MEDSAM3D_INCREMENTAL") == "1"
results = run_suites(Segmenter(model, threads=threads, backend=backend, incremental=incremental), config,
                     baselines=False, log=lambda m: None)
now = model_dice(results, config.clicks)
print(f"{backend} {model}{' incremental' if incremental else ''}")
for k in now:
    print(f"@{k}: now {now[k]:.6f} recorded {recorded[str(k)]:.6f} diff {now[k] - recorded[str(k)]:+.2e}")
print(f"{time.time() - t0:.0f} s")
