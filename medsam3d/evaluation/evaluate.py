"""``medsam3d evaluate``: run the click protocol over an nnU-Net-layout dataset for a model and the baselines.

A structure that fails for one method is recorded as ``{"error": ...}`` for that method and the run goes on;
with ``out`` the results so far are written (atomically) after every structure, so a stopped run keeps what it
measured (``"complete": false`` until the end).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..datasets import discover, label_names
from ..errors import InputError
from ..io import atomic_output, read_volume, write_text_atomic
from .methods import Method
from ..boxes import bounding_box
from .metrics import dice, nsd
from .protocol import BASELINES, PROTOCOL, deepest_point, next_click, targets_from_labels


class Progress:
    """What ``evaluate`` says while it runs; this one says nothing (``progress.LiveProgress`` shows it)."""

    def begin(self, n_cases: int) -> None: ...

    def case(self, case_id: str, n_targets: int) -> None: ...

    def step(self, structure: str, method: str, click: int, clicks: int) -> None: ...

    def structure_done(self) -> None: ...


def run_protocol(method: Method, target: np.ndarray, spacing, clicks: Sequence[int], tolerance_mm: float,
                 first_click: Optional[np.ndarray] = None,
                 on_click: Optional[Callable[[int], None]] = None) -> dict[str, dict[str, float]]:
    """One target (bool, the scan's grid), one method: {"dice": {"1": .., "3": ..}, "nsd": {...},
    "clicks": [[i, j, k, label], ...]}. ``first_click``: the target's deepest point, if already known."""
    method.start_target()
    points = [deepest_point(target, spacing) if first_click is None else np.asarray(first_click)]
    labels = [1]
    out: dict = {"dice": {}, "nsd": {}, "clicks": []}
    # every error and both surfaces lie in the union of prediction and target (plus NSD's own margin): the
    # protocol's steps run on that crop, not on the whole scan
    margin = [int(np.ceil(tolerance_mm / s)) + 2 for s in spacing]
    target_box = bounding_box(target)
    pred = crop = None
    for k in range(1, max(clicks) + 1):
        if on_click is not None:
            on_click(k)
        click = None
        if k > 1:
            click = next_click(pred[crop], target[crop], spacing)
            if click is not None:  # a perfect prediction needs no further click: it stays as it is
                points.append(click[0] + [c.start for c in crop])
                labels.append(click[1])
        if k == 1 or click is not None:
            pred = method.predict(np.asarray(points, dtype=np.float64), np.asarray(labels))
            crop = _union_box(bounding_box(pred) if pred.any() else target_box, target_box, margin, pred.shape)
        if k in clicks:
            out["dice"][str(k)] = dice(pred[crop], target[crop])
            out["nsd"][str(k)] = nsd(pred[crop], target[crop], spacing, tolerance_mm)
    out["clicks"] = [[int(c) for c in p] + [int(lab)] for p, lab in zip(points, labels)]
    return out


def _union_box(a, b, margin, shape) -> tuple[slice, slice, slice]:
    return tuple(slice(max(min(x.start, y.start) - m, 0), min(max(x.stop, y.stop) + m, n))
                 for x, y, m, n in zip(a, b, margin, shape))


def evaluate(root: str | Path, methods: dict[str, Method], clicks: Sequence[int] = (1, 3, 5, 10),
             min_size_ml: float = 1.0, tolerance_mm: float = 2.0, cases: Optional[Sequence[str]] = None,
             label_values: Optional[Sequence[int]] = None, log: Callable[[str], None] = print,
             out: Optional[str | Path] = None, extra: Optional[dict] = None, progress: Optional[Progress] = None,
             model: Optional[str] = "") -> dict:
    """Every target of every (chosen) case, every method -> the results dict written to results.json.

    ``model``: which of ``methods`` is the model (default: the first; None: all are baselines). ``out``: write
    the results so far there after every structure. ``extra``: keys added to the results."""
    clicks = sorted(set(int(c) for c in clicks))
    if not clicks or clicks[0] < 1:
        raise InputError("--clicks must be positive click counts like 1,3,5,10")
    model = next(iter(methods), None) if model == "" else model
    root = Path(root)
    names = label_names(root)
    chosen = [c for c in discover(root) if cases is None or c.case_id in set(cases)]
    if not chosen:
        raise InputError(f"no case of {root} matches {', '.join(cases or [])}")
    progress = progress or Progress()
    progress.begin(len(chosen))
    started = time.perf_counter()
    per_structure: list[dict] = []
    skipped: list[str] = []

    def results(complete: bool) -> dict:
        summary = summarise(per_structure, list(methods), clicks, min_size_ml, tolerance_mm, root, skipped,
                            time.perf_counter() - started, model)
        return {**summary, **(extra or {}), "complete": complete}

    for case in chosen:
        try:
            volume, targets, rows = _load_case(case, label_values, names, min_size_ml)
        except Exception as exc:  # an unreadable case is one line in "skipped", not the end of the run
            skipped.append(f"{case.case_id} ({_describe(exc)})")
            log(f"{case.case_id}: skipped: {_describe(exc)}")
            continue
        log(f"{case.case_id}: {len(targets)} target(s)")
        progress.case(case.case_id, len(targets))
        broken = {}  # method -> why it could not take this scan
        for name, method in methods.items():
            try:
                method.reset(volume)
            except Exception as exc:
                broken[name] = _describe(exc)
        for row, target in zip(rows, targets):
            mask = target.mask
            first = deepest_point(target.crop, volume.spacing) + [b.start for b in target.box]
            for name, method in methods.items():
                try:
                    if name in broken:
                        raise RuntimeError(broken[name])
                    row[name] = run_protocol(method, mask, volume.spacing, clicks, tolerance_mm, first,
                                             lambda k, n=name: progress.step(row["name"], n, k, clicks[-1]))
                except Exception as exc:
                    row[name] = {"error": _describe(exc)}
                    log(f"  {row['name']}: {name} failed: {row[name]['error']}")
            per_structure.append(row)
            if out is not None:
                write_text_atomic(out, json.dumps(results(complete=False), indent=2))
            progress.structure_done()
        for name in methods:
            scored = [r[name]["dice"][str(clicks[0])] for r in rows if "error" not in r[name]]
            failed = len(rows) - len(scored)
            log(f"  {name}: mean Dice @{clicks[0]} click(s) {np.mean(scored) if scored else float('nan'):.3f}"
                + (f" ({failed} failed)" if failed else ""))
    if not per_structure:
        raise InputError(f"no target to evaluate in {root}" + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
    final = results(complete=True)
    if out is not None:
        write_text_atomic(out, json.dumps(final, indent=2))
    return final


def _load_case(case, label_values, names, min_size_ml):
    """-> (volume, targets, result rows) of one case; raises InputError when it cannot be evaluated."""
    if case.label is None:
        raise InputError("missing label")
    volume, labels = read_volume(case.image), read_volume(case.label)
    if labels.shape != volume.shape or not np.allclose(labels.spacing, volume.spacing, atol=1e-4):
        raise InputError("image and label geometry differ")
    label_array = labels.array if label_values is None else np.where(np.isin(labels.array, label_values),
                                                                      labels.array, 0)
    targets = targets_from_labels(label_array, volume.spacing, names, min_size_ml)
    rows = [{"case": case.case_id, "modality": case.modality, "label": t.value, "name": t.name,
             "volume_ml": float(t.crop.sum() * np.prod(volume.spacing) / 1000.0)} for t in targets]
    return volume, targets, rows


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"


def summarise(rows: list[dict], method_names: list[str], clicks: list[int], min_size_ml: float, tolerance_mm: float,
              root: Path, skipped: list[str], seconds: float, model: Optional[str] = "") -> dict:
    """Means over the structures each method scored (a failure is counted, not averaged in as 0)."""
    model = (method_names[0] if method_names else None) if model == "" else model

    def means(name: str, metric: str) -> Optional[dict[str, float]]:
        scored = [r[name][metric] for r in rows if "error" not in r[name]]
        return {str(k): float(np.mean([s[str(k)] for s in scored])) for k in clicks} if scored else None

    def counts(name: str) -> dict[str, int]:
        failed = sum("error" in r[name] for r in rows)
        return {"n_scored": len(rows) - failed, "n_failed": failed}

    def result(r: dict, name: str, keys: Sequence[str]) -> dict:
        return {"error": r[name]["error"]} if "error" in r[name] else {k: r[name][k] for k in keys}

    baselines = [m for m in method_names if m != model]
    return {
        "model": model,
        "dataset": str(root),
        "protocol": {**PROTOCOL, "clicks": clicks, "min_size_ml": min_size_ml, "nsd_tolerance_mm": tolerance_mm,
                     "baselines": BASELINES},
        "n_structures": len(rows),
        "mean_dice": means(model, "dice") if model else None,
        "mean_nsd": means(model, "nsd") if model else None,
        **(counts(model) if model else {}),
        "baselines": {b: {"mean_dice": means(b, "dice"), "mean_nsd": means(b, "nsd"), **counts(b)}
                      for b in baselines},
        "per_structure": [{**{k: v for k, v in r.items() if k not in method_names},
                           **(result(r, model, ("dice", "nsd", "clicks")) if model else {}),
                           "baselines": {b: result(r, b, ("dice", "nsd")) for b in baselines}}
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
    if results.get("mean_dice"):
        ax.plot(clicks, [results["mean_dice"][str(k)] for k in clicks], "o-", lw=2, label=results["model"])
    for name, values in results["baselines"].items():
        if not values.get("mean_dice"):
            continue
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
