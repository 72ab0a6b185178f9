"""The generated parts of the model card: held-out numbers and training provenance, written between markers.

The card (``medsam3d/weights/MODEL_CARD.md``) is prose written by hand, with two blocks the promotion gate owns:

    <!-- gate:results:begin --> ... <!-- gate:results:end -->     held-out tables, written from the results JSONs
    <!-- gate:training:begin --> ... <!-- gate:training:end -->   how the weights were trained

so the numbers a reader sees are the ones measured on the weights that ship.
"""

from __future__ import annotations

import re
from typing import Optional

BLOCKS = ("results", "training")


def replace_block(card: str, block: str, body: str) -> str:
    """``card`` with the text between the ``block`` markers replaced by ``body``."""
    begin, end = f"<!-- gate:{block}:begin -->", f"<!-- gate:{block}:end -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(card):
        raise ValueError(f"the model card has no {begin} ... {end} block")
    return pattern.sub(lambda _: f"{begin}\n{body.strip()}\n{end}", card)


def _row(values: dict, clicks: list[int]) -> str:
    return " | ".join(f"{values[str(k)]:.3f}" if str(k) in values else "-" for k in clicks)


def results_block(summary: dict, results_by_suite: dict[str, dict], weights: dict, docs_prefix: str) -> str:
    """Markdown: weights identity, mean Dice per suite and pooled against the baselines, and per structure."""
    clicks = summary["clicks"]
    header = " | ".join(f"@{k}" for k in clicks)
    lines = [
        f"Weights: `{weights['file']}`, {weights['size_mb']} MB, sha256 `{weights['sha256'][:16]}...`, promoted "
        f"{weights['promoted']} (gate fingerprint `{summary['fingerprint']}`).",
        "",
        f"Mean Dice by number of clicks, fixed protocol (`medsam3d/evaluation/protocol.py`), "
        f"{summary['n_structures']} held-out structures:",
        "",
        f"| suite | structures | method | {header} |",
        "|---|---|---|" + "---|" * len(clicks),
    ]
    for name, suite in summary["suites"].items():
        lines.append(f"| {name} | {suite['n_structures']} | **medsam3d (this model)** | {_row(suite['dice'], clicks)} |")
        for b, values in suite["baselines"].items():
            lines.append(f"| | | {b.replace('_', ' ')} | {_row(values, clicks)} |")
    lines.append(f"| **all** | {summary['n_structures']} | **medsam3d (this model)** | "
                 f"{_row(summary['dice'], clicks)} |")
    for b, values in summary["baselines"].items():
        lines.append(f"| | | {b.replace('_', ' ')} | {_row(values, clicks)} |")
    if summary.get("example"):
        ex = summary["example"]
        lines += ["", f"The README's example (`{ex['scan']}`, one click at ijk {tuple(ex['point'])}): Dice "
                      f"{ex['dice']:.3f} against its label, {ex['volume_ml']:.0f} ml "
                      "(`tests/integration/test_default_model.py` holds the default to this number)."]
    lines += ["", "Plots and full results (per structure, per click, NSD, the clicks placed): "
              + ", ".join(f"[`{name}`]({docs_prefix}/{name}.png) ([json]({docs_prefix}/{name}.json))"
                          for name in results_by_suite) + ".", ""]
    lines += ["Per structure (Dice; RG = region growing, RW = random walker):", "",
              f"| suite | structure | ml | {header} | RG @1 | RG @5 | RW @1 | RW @5 |",
              "|---|---|---|" + "---|" * (len(clicks) + 4)]
    for name, results in results_by_suite.items():
        for row in results["per_structure"]:
            base = row.get("baselines", {})
            extra = [_cell(base.get(b, {}), k) for b in ("region_growing", "random_walker") for k in (1, 5)]
            lines.append(f"| {name} | {row['name']} | {row['volume_ml']:.1f} | {_row(row.get('dice') or {}, clicks)} "
                         f"| {' | '.join(extra)} |")
    return "\n".join(lines)


def _cell(result: Optional[dict], k: int) -> str:
    value = (result or {}).get("dice", {}) or {}
    return f"{value[str(k)]:.2f}" if str(k) in value else "-"
