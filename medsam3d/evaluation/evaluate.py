"""``medsam3d evaluate``: run the click protocol over an nnU-Net-layout dataset for a model and the baselines."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..io import atomic_output, read_volume
from ..training.data import discover
from .methods import Method
from .metrics import dice, nsd
from .protocol import PROTOCOL, deepest_point, next_click, targets_from_labels


def run_protocol(method: Method, target: np.ndarray, spacing, clicks: Sequence[int],
                 tolerance_mm: float) -> dict[str, dict[str, float]]:
    """One target, one method: {"dice": {"1": .., "3": ..}, "nsd": {...}, "clicks": [[i, j, k, label], ...]}."""
    method.start_target()
    points = [deepest_point(target, spacing)]
    labels = [1]
    out: dict = {"dice": {}, "nsd": {}, "clicks": []}
    pred = None
    for k in range(1, max(clicks) + 1):
        if k > 1:
            click = next_click(pred, target, spacing)
            if click is not None:  # a perfect prediction needs no further click: it stays as it is
                points.append(click[0])
                labels.append(click[1])
        if k == 1 or click is not None:
            pred = method.predict(np.asarray(points, dtype=np.float64), np.asarray(labels))
        if k in clicks:
            out["dice"][str(k)] = dice(pred, target)
            out["nsd"][str(k)] = nsd(pred, target, spacing, tolerance_mm)
    out["clicks"] = [[int(c) for c in p] + [int(lab)] for p, lab in zip(points, labels)]
    return out


def evaluate(root: str | Path, methods: dict[str, Method], clicks: Sequence[int] = (1, 3, 5, 10),
             min_size_ml: float = 1.0, tolerance_mm: float = 2.0, cases: Optional[Sequence[str]] = None,
             label_values: Optional[Sequence[int]] = None, log: Callable[[str], None] = print) -> dict:
    """Every target of every (chosen) case, every method -> the results dict written to results.json."""
    clicks = sorted(set(int(c) for c in clicks))
    if not clicks or clicks[0] < 1:
        raise InputError("--clicks must be positive click counts like 1,3,5,10")
    root = Path(root)
    meta = json.loads((root / "dataset.json").read_text()) if (root / "dataset.json").is_file() else {}
    names = {int(v): k for k, v in (meta.get("labels") or {}).items() if str(v).isdigit() or isinstance(v, int)}
    chosen = [c for c in discover(root) if cases is None or c.case_id in set(cases)]
    if not chosen:
        raise InputError(f"no case of {root} matches {', '.join(cases or [])}")
    started = time.perf_counter()
    per_structure, skipped = [], []
    for case in chosen:
        if case.label is None:
            skipped.append(f"{case.case_id} (missing label)")
            continue
        volume, labels = read_volume(case.image), read_volume(case.label)
        if labels.shape != volume.shape or not np.allclose(labels.spacing, volume.spacing, atol=1e-4):
            skipped.append(f"{case.case_id} (image and label geometry differ)")
            continue
        label_array = labels.array if label_values is None else np.where(np.isin(labels.array, label_values),
                                                                          labels.array, 0)
        targets = targets_from_labels(label_array, volume.spacing, names, min_size_ml)
        log(f"{case.case_id}: {len(targets)} target(s)")
        rows = [{"case": case.case_id, "modality": case.modality, "label": t.value, "name": t.name,
                 "volume_ml": float(t.mask.sum() * np.prod(volume.spacing) / 1000.0)} for t in targets]
        for method_name, method in methods.items():
            method.reset(volume)
            for row, target in zip(rows, targets):
                row[method_name] = run_protocol(method, target.mask, volume.spacing, clicks, tolerance_mm)
            log(f"  {method_name}: mean Dice @{clicks[0]} click(s) "
                f"{np.mean([r[method_name]['dice'][str(clicks[0])] for r in rows]) if rows else float('nan'):.3f}")
        per_structure += rows
    if not per_structure:
        raise InputError(f"no target to evaluate in {root}" + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
    return summarise(per_structure, list(methods), clicks, min_size_ml, tolerance_mm, root, skipped,
                     time.perf_counter() - started)


def summarise(rows: list[dict], method_names: list[str], clicks: list[int], min_size_ml: float, tolerance_mm: float,
              root: Path, skipped: list[str], seconds: float) -> dict:
    def means(name: str, metric: str) -> dict[str, float]:
        return {str(k): float(np.mean([r[name][metric][str(k)] for r in rows])) for k in clicks}

    model, *baselines = method_names
    return {
        "model": model,
        "dataset": str(root),
        "protocol": {**PROTOCOL, "clicks": clicks, "min_size_ml": min_size_ml, "nsd_tolerance_mm": tolerance_mm},
        "n_structures": len(rows),
        "mean_dice": means(model, "dice"),
        "mean_nsd": means(model, "nsd"),
        "baselines": {b: {"mean_dice": means(b, "dice"), "mean_nsd": means(b, "nsd")} for b in baselines},
        "per_structure": [{**{k: v for k, v in r.items() if k not in method_names},
                           "dice": r[model]["dice"], "nsd": r[model]["nsd"], "clicks": r[model]["clicks"],
                           "baselines": {b: {"dice": r[b]["dice"], "nsd": r[b]["nsd"]} for b in baselines}}
                          for r in rows],
        "skipped": skipped,
        "seconds": seconds,
    }


def plot(results: dict, path: str | Path) -> None:
    """Dice against clicks for the model and each baseline (PNG, written atomically)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib (pip install matplotlib)") from None
    clicks = results["protocol"]["clicks"]
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    ax.plot(clicks, [results["mean_dice"][str(k)] for k in clicks], "o-", lw=2, label=results["model"])
    for name, values in results["baselines"].items():
        ax.plot(clicks, [values["mean_dice"][str(k)] for k in clicks], "s--", label=name.replace("_", " "))
    ax.set_xlabel("clicks")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.set_xticks(clicks)
    ax.grid(alpha=0.3)
    ax.set_title(f"{results['n_structures']} structures, {Path(results['dataset']).name}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
