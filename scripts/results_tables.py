#!/usr/bin/env python
"""Markdown tables from `medsam3d evaluate` results (the gate's too: docs/model_card/*.json), for notes and cards.

    python scripts/results_tables.py docs/model_card/ct_organs.json [docs/model_card/lesions_ct.json ...] \\
        [--per-structure]

Prints, per results file, mean Dice (and NSD) at each click count for the model and every baseline, and with
--per-structure one row per target. Nothing is rounded beyond the printed 3 decimals; nothing is filtered.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def mean_table(results: dict) -> list[str]:
    clicks = [str(k) for k in results["protocol"]["clicks"]]
    lines = ["| method | " + " | ".join(f"Dice@{k}" for k in clicks) + f" | NSD@{clicks[-1]} |",
             "|---|" + "---|" * (len(clicks) + 1)]
    rows = [(results["model"], results["mean_dice"], results["mean_nsd"])]
    rows += [(name, b["mean_dice"], b["mean_nsd"]) for name, b in results["baselines"].items()]
    for name, dice, nsd in rows:
        lines.append(f"| {name} | " + " | ".join(f"{dice[k]:.3f}" for k in clicks) + f" | {nsd[clicks[-1]]:.3f} |")
    return lines


def structure_table(results: dict) -> list[str]:
    clicks = [str(k) for k in results["protocol"]["clicks"]]
    baselines = list(results["baselines"])
    head = ["structure", "ml"] + [f"model@{k}" for k in clicks] + [f"{b}@{clicks[-1]}" for b in baselines]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in results["per_structure"]:
        cells = [str(row.get("name", row.get("label"))), f"{row.get('volume_ml', float('nan')):.1f}"]
        cells += [_cell(row.get("dice"), k) for k in clicks]  # a failed structure has an error, no Dice
        cells += [_cell(row["baselines"].get(b, {}).get("dice"), clicks[-1]) for b in baselines]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--per-structure", action="store_true")
    args = parser.parse_args()
    for path in args.results:
        results = json.loads(path.read_text())
        print(f"{path} ({results['n_structures']} structures, {Path(results['dataset']).name})\n")
        print("\n".join(mean_table(results)) + "\n")
        if args.per_structure:
            print("\n".join(structure_table(results)) + "\n")


def _cell(dice, k) -> str:
    return f"{dice[k]:.3f}" if dice and k in dice else "error"


if __name__ == "__main__":
    main()

