#!/usr/bin/env python
"""Learning curves: held-out mean Dice at each kept snapshot of one or more runs (``train.snapshot_every``).

    python scripts/learning_curve.py runs/a runs/b --labels real,anatomy --start medsam3d/weights \\
        --out docs/experiments/curves.json --plot docs/experiments/curves.png

Every snapshot (``RUN/snapshots/stepN.pt``) is evaluated with the fixed protocol on the gate's held-out suites
(``configs/gate.yaml``), model only; ``--start`` adds the weights the runs started from as step 0. Writes a JSON
of {label: {step: {"dice": pooled per click, "suites": per suite}}} and a plot of Dice at 1 and 5 clicks against
steps. Evaluations already in the JSON are kept, so the script can be re-run as runs go on.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from medsam3d.evaluation.gate import REPO, load_gate_config, model_dice, run_suites
from medsam3d.io import write_text_atomic
from medsam3d.segmenter import Segmenter


def snapshots(run: Path) -> list[tuple[int, Path]]:
    found = [(int(re.fullmatch(r"step(\d+)\.pt", p.name).group(1)), p) for p in (run / "snapshots").glob("step*.pt")
             if re.fullmatch(r"step(\d+)\.pt", p.name)]
    return sorted(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--labels", help="comma-separated names for the runs (default: folder names)")
    parser.add_argument("--start", type=Path, help="folder with default.yaml + default.pt the runs started from")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "gate.yaml")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    labels = args.labels.split(",") if args.labels else [r.name for r in args.runs]
    if len(labels) != len(args.runs):
        print("learning_curve: error: one label per run", file=sys.stderr)
        return 2
    config = load_gate_config(args.config)
    curves = json.loads(args.out.read_text()) if args.out.is_file() else {}
    start = None
    if args.start:
        start = (args.start / "default.yaml", args.start / "default.pt")
    for label, run in zip(labels, args.runs):
        points = [(0, *start)] if start else []
        points += [(step, run / "snapshots" / "model.yaml", path) for step, path in snapshots(run)]
        curve = curves.setdefault(label, {})
        for step, spec, weights in points:
            if str(step) in curve:
                continue
            seg = Segmenter(model=str(spec), checkpoint=weights, threads=args.threads)
            results = run_suites(seg, config, baselines=False, log=lambda m: None)
            curve[str(step)] = {"dice": model_dice(results, config.clicks),
                                "suites": {name: r["mean_dice"] for name, r in results.items()}}
            print(f"{label} step {step}: " + " ".join(f"@{k} {v:.3f}" for k, v in curve[str(step)]["dice"].items()),
                  flush=True)
            write_text_atomic(args.out, json.dumps(curves, indent=2))
    if args.plot:
        draw(curves, args.plot)
    return 0


def draw(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medsam3d.io import atomic_output

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120, sharey=True)
    for ax, k in zip(axes, ("1", "5")):
        for label, curve in curves.items():
            steps = sorted(int(s) for s in curve)
            ax.plot(steps, [curve[str(s)]["dice"][k] for s in steps], "o-", label=label)
        ax.set_title(f"held-out mean Dice, {k} click(s)", fontsize=9)
        ax.set_xlabel("training steps")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean Dice")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
