#!/usr/bin/env python
"""The promotion gate: make a trained model the packaged default only if the held-out split says it is better.

    python scripts/promote.py runs/RUN                                  # a training run folder
    python scripts/promote.py weights.yaml --checkpoint weights.pt --training how.md
    python scripts/promote.py runs/RUN --dry-run                        # evaluate and decide, write nothing
    python scripts/promote.py --remeasure                               # the default again, same weights, after
                                                                        # a change to the Segmenter (REVISION)

Evaluates the candidate (as float16 weights, exactly as they would ship) with the fixed click protocol on the
held-out suites of configs/gate.yaml, with both baselines; compares its mean Dice with the current default's at
every click count (the rule is in configs/gate.yaml and medsam3d/evaluation/gate.py); if it passes, writes
medsam3d/weights/default.{pt,yaml,json}, the numbers and training blocks of medsam3d/weights/MODEL_CARD.md, and
the results JSON and plots under docs/model_card/, in one step. Exit code 0: promoted (or would be, with
--dry-run); 1: refused; 2: bad input.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from medsam3d.errors import InputError
from medsam3d.evaluation.gate import REPO, load_gate_config, remeasure_default, run_gate
from medsam3d.store import PACKAGED


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidate", type=Path, nargs="?", help="run folder (model.pt + model.yaml) or a model YAML")
    parser.add_argument("--checkpoint", type=Path, help="weights, when the candidate is a YAML")
    parser.add_argument("--training", type=Path, help="markdown for the card's training block (default: from "
                                                      "the run folder's config.yaml)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "gate.yaml")
    parser.add_argument("--weights-dir", type=Path, default=PACKAGED)
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "model_card")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dry-run", action="store_true", help="evaluate and decide; write nothing")
    parser.add_argument("--debug", action="store_true", help="show library warnings")
    parser.add_argument("--remeasure", action="store_true", help="no candidate: measure the packaged default "
                                                                  "again with the code as it is and re-record it")
    args = parser.parse_args()
    if not args.debug:  # libraries' warnings (scikit-image's "probability range", ...) only with --debug
        warnings.simplefilter("ignore")
    try:
        config = load_gate_config(args.config)
        if args.remeasure:
            if args.candidate is not None or args.dry_run or args.checkpoint or args.training:
                raise InputError("--remeasure takes no candidate, --checkpoint, --training or --dry-run")
            remeasure_default(config, args.weights_dir, args.docs, threads=args.threads, device=args.device)
            return 0
        if args.candidate is None:
            raise InputError("give a candidate, or --remeasure alone")
        decision = run_gate(args.candidate, args.checkpoint, config, args.weights_dir, args.docs,
                            training_md=args.training, threads=args.threads, device=args.device,
                            dry_run=args.dry_run)
    except InputError as exc:
        print(f"promote: error: {exc}", file=sys.stderr)
        return 2
    return 0 if decision.promote else 1


if __name__ == "__main__":
    sys.exit(main())
