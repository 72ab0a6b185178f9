"""The promotion gate: a candidate model becomes the packaged default only if the held-out split says it is better.

    python scripts/promote.py runs/RUN                   # evaluate, compare with the current default, promote or not

One call evaluates the candidate with the fixed click protocol on the fixed held-out suites (``configs/gate.yaml``:
CT organs and held-out lesions), compares its mean Dice with the current default's at every click count, and, only
when it passes, writes the weights, the card's numbers, the results JSON and the plot together, so the card can
never disagree with the weights it describes.

The rule (``decide``): the candidate's mean Dice over every gate structure is not lower than the current default's
at any click count by more than ``tolerance``, and is higher at one of ``improve_at`` (1 or 5 clicks).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import yaml

from ..datasets import heldout_cases
from ..errors import InputError

REPO = Path(__file__).resolve().parents[2]  # the gate is a maintainer tool: it runs from a checkout


@dataclass
class Suite:
    """One held-out evaluation: a dataset folder, the cases in it, optionally a subset of label values."""

    name: str
    dataset: Path
    cases: list[str]
    labels: Optional[list[int]] = None


@dataclass
class GateConfig:
    clicks: list[int]
    tolerance: float  # Dice the candidate may lose at a click count (structure-sampling noise)
    improve_at: list[int]  # click counts at which one gain is required
    min_size_ml: float
    suites: list[Suite] = field(default_factory=list)
    goal: dict[str, float] = field(default_factory=dict)  # click count -> the Dice the project aims for
    example: Optional[dict] = None  # the README's example: {scan, label, point (ijk)}, measured and recorded


@dataclass
class Decision:
    promote: bool
    reasons: list[str]


def load_gate_config(path: str | Path, root: Path = REPO, split: Optional[Path] = None) -> GateConfig:
    """``configs/gate.yaml`` -> GateConfig; every suite case must be a held-out case of the public split."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read the gate config {path}: {exc}") from None
    unknown = set(raw) - {"clicks", "tolerance", "improve_at", "min_size_ml", "suites", "split", "goal", "example"}
    if unknown:
        raise InputError(f"{path}: unknown keys {sorted(unknown)}")
    split = split or (root / raw.get("split", "configs/data/public_split.json"))
    heldout = heldout_cases(split)
    suites = []
    for name, spec in raw["suites"].items():
        cases = [str(c) for c in spec["cases"]]
        if set(cases) - heldout:
            raise InputError(f"gate suite {name} names cases that are not held out in {split}: "
                             f"{sorted(set(cases) - heldout)}")
        labels = [int(v) for v in spec["labels"]] if spec.get("labels") else None
        suites.append(Suite(name, root / spec["dataset"], cases, labels))
    clicks = sorted(int(c) for c in raw["clicks"])
    improve_at = [int(c) for c in raw["improve_at"]]
    if set(improve_at) - set(clicks):
        raise InputError(f"{path}: improve_at {improve_at} must be among clicks {clicks}")
    goal = {str(k): float(v) for k, v in (raw.get("goal") or {}).items()}
    example = raw.get("example")
    if example is not None:
        example = {"scan": root / example["scan"], "label": root / example["label"],
                   "point": [int(c) for c in example["point"]]}
    return GateConfig(clicks, float(raw["tolerance"]), improve_at, float(raw.get("min_size_ml", 1.0)), suites, goal,
                      example)


def fingerprint(config: GateConfig, protocol: dict) -> str:
    """What makes two gate results comparable: the protocol, the Segmenter's revision, the suites and the bytes of
    their scans and labels."""
    from ..segmenter import REVISION

    digest = hashlib.sha256(json.dumps({"protocol": protocol, "clicks": config.clicks,
                                        "min_size_ml": config.min_size_ml, "segmenter": REVISION},
                                       sort_keys=True).encode())
    for suite in config.suites:
        digest.update(json.dumps([suite.name, suite.cases, suite.labels]).encode())
        for case in suite.cases:
            for sub, stem in (("imagesTr", f"{case}_0000"), ("labelsTr", case)):
                for file in sorted((suite.dataset / sub).glob(f"{stem}.*")):
                    digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]


def model_dice(results_by_suite: dict[str, dict], clicks: list[int]) -> dict[str, float]:
    """Mean model Dice per click count over every structure of every suite (a structure that failed counts 0)."""
    rows = [row for results in results_by_suite.values() for row in results["per_structure"]]
    if not rows:
        raise InputError("the gate suites hold no structure to score")
    return {str(k): float(np.mean([_dice_at(row, k) for row in rows])) for k in clicks}


def _dice_at(row: dict, k: int) -> float:
    return float((row.get("dice") or {}).get(str(k), 0.0))


def decide(candidate: dict[str, float], current: Optional[dict[str, float]], tolerance: float,
           improve_at: list[int]) -> Decision:
    """The gate's rule on mean Dice per click count ({"1": .., "3": ..})."""
    if current is None:
        return Decision(True, ["no default ships yet: the candidate becomes the first"])
    reasons, worse, better = [], [], []
    for k, value in candidate.items():
        delta = value - current[k]
        reasons.append(f"{k} click(s): {value:.3f} vs current {current[k]:.3f} ({delta:+.3f})")
        if delta < -tolerance:
            worse.append(k)
        if delta > 0 and int(k) in improve_at:
            better.append(k)
    if worse:
        reasons.append(f"refused: lower than the current default by more than {tolerance} at {', '.join(worse)}")
    elif not better:
        reasons.append(f"refused: not higher than the current default at {' or '.join(map(str, improve_at))} "
                       "click(s)")
    else:
        reasons.append(f"promoted: higher at {', '.join(better)} click(s), not lower elsewhere "
                       f"(tolerance {tolerance})")
    return Decision(not worse and bool(better), reasons)


def run_suites(segmenter, config: GateConfig, baselines: bool, log: Callable[[str], None] = print) -> dict:
    """Evaluate ``segmenter``'s model (and the baselines) on every suite -> {suite: results dict}."""
    from .evaluate import evaluate
    from .methods import ModelMethod, RandomWalker, RegionGrowing

    name = getattr(segmenter.model, "name", "model")
    out = {}
    for suite in config.suites:
        if not (suite.dataset / "dataset.json").is_file():
            raise InputError(f"gate suite {suite.name}: {suite.dataset} is missing; run "
                             "bash scripts/fetch_public_data.sh")
        methods = {name: ModelMethod(segmenter, name)}
        if baselines:
            methods.update({"region_growing": RegionGrowing(), "random_walker": RandomWalker()})
        log(f"gate suite {suite.name}: {suite.dataset.name} {','.join(suite.cases)}")
        results = evaluate(suite.dataset, methods, config.clicks, config.min_size_ml, cases=suite.cases,
                           label_values=suite.labels, log=log)
        results["checkpoint_sha256"] = segmenter.weights_sha256
        out[suite.name] = results
    return out


def measure_example(segmenter, example: dict) -> dict:
    """The README's first command, through the same Segmenter: Dice of its one-click mask against the label."""
    from ..io import read_volume
    from .metrics import dice

    segmenter.set_volume(example["scan"])
    mask = segmenter.predict(points=[example["point"]]).mask
    label = read_volume(example["label"]).array > 0
    return {"scan": Path(example["scan"]).name, "point": example["point"],
            "dice": dice(mask.array > 0, label),
            "volume_ml": float((mask.array > 0).sum() * np.prod(mask.spacing) / 1000.0)}


def summary(results_by_suite: dict[str, dict], config: GateConfig, fingerprint_: str) -> dict:
    """The numbers default.json carries: per suite and pooled, model and baselines, per click count."""
    suites = {}
    for name, results in results_by_suite.items():
        suites[name] = {"n_structures": results["n_structures"], "dice": results["mean_dice"],
                        "nsd": results["mean_nsd"],
                        "baselines": {b: v["mean_dice"] for b, v in results.get("baselines", {}).items()}}
    pooled_baselines = {}
    names = {b for results in results_by_suite.values() for b in results.get("baselines", {})}
    for b in sorted(names):
        rows = [row["baselines"][b] for results in results_by_suite.values() for row in results["per_structure"]]
        pooled_baselines[b] = {str(k): float(np.mean([(r.get("dice") or {}).get(str(k), 0.0) for r in rows]))
                               for k in config.clicks}
    return {"fingerprint": fingerprint_, "clicks": config.clicks,
            "n_structures": sum(s["n_structures"] for s in suites.values()),
            "dice": model_dice(results_by_suite, config.clicks), "baselines": pooled_baselines, "suites": suites}


# ---------------------------------------------------------------------------------------------- promotion
@dataclass
class Candidate:
    """Weights as they would ship (float16, model weights only) and the architecture they load into."""

    spec: dict  # {"model": name, **config}: model.yaml's content
    weights: Path  # staged .pt file, evaluated as is
    training: str  # markdown for the card's training block


def stage_candidate(source: Path, checkpoint: Optional[Path], staging: Path, training_md: Optional[Path]) -> Candidate:
    """A run folder (model.pt + model.yaml [+ config.yaml]) or a YAML + checkpoint -> float16 weights in
    ``staging``, checked to load strictly. The gate evaluates exactly these bytes, so the card describes what
    ships, float16 rounding included."""
    import torch

    from ..models import build_model, half_state, read_state_dict

    if source.is_dir():
        yaml_path, checkpoint = source / "model.yaml", source / "model.pt"
    else:
        yaml_path = source
    if checkpoint is None or not Path(checkpoint).is_file() or not yaml_path.is_file():
        raise InputError(f"a candidate is a run folder holding model.pt and model.yaml, or a model YAML with "
                         f"--checkpoint; got {source}" + (f" and {checkpoint}" if checkpoint else ""))
    spec = yaml.safe_load(yaml_path.read_text())
    if not isinstance(spec, dict) or "model" not in spec:
        raise InputError(f"{yaml_path} does not name a model architecture (key 'model')")
    state = half_state(read_state_dict(checkpoint))
    config = {k: v for k, v in spec.items() if k != "model"}
    build_model(spec["model"], checkpoint=state, **config)  # strict: names missing and unexpected keys
    staging.mkdir(parents=True, exist_ok=True)
    weights = staging / "default.pt"
    torch.save({"model": state}, weights)
    if training_md is not None:
        training = Path(training_md).read_text(encoding="utf-8")
    elif source.is_dir() and (source / "config.yaml").is_file():
        training = _training_from_run(source)
    else:
        raise InputError("say how the candidate was trained: --training FILE.md (or give a run folder with its "
                         "config.yaml)")
    return Candidate(spec, weights, training)


def _training_from_run(run: Path) -> str:
    """The card's training block from a run folder: its config (with the command) and the steps it reached."""
    config = (run / "config.yaml").read_text()
    steps = "unknown"
    metrics = run / "metrics.csv"
    if metrics.is_file():
        rows = [line.split(",")[0] for line in metrics.read_text().splitlines()[1:] if line]
        steps = max((int(r) for r in rows if r.isdigit()), default=0)
    return (f"Trained by `medsam3d {yaml.safe_load(config).get('command', 'train')}` to step {steps} "
            f"(run folder `{run.name}`), with this resolved config:\n\n```yaml\n{config.strip()}\n```")


def current_default(weights_dir: Path) -> Optional[dict]:
    """The packaged default's record (default.json), or None when none ships."""
    path = weights_dir / "default.json"
    return json.loads(path.read_text()) if path.is_file() else None


def status_line(dice: dict[str, float], goal: dict[str, float]) -> str:
    """One line for `models list`: whether the held-out numbers reach the project's goal."""
    short = [k for k, v in goal.items() if dice.get(str(k), 0.0) < v]
    if not short:
        return "meets the project's accuracy goal"
    return ("preliminary: below the project's accuracy goal ("
            + ", ".join(f"Dice >= {goal[k]:.2f} at {k} click(s)" for k in goal) + ") on the held-out split")


def write_default(candidate: Candidate, results_by_suite: dict[str, dict], summary_: dict, weights_dir: Path,
                  docs_dir: Path, goal: dict[str, float], promoted: str) -> dict:
    """Install the candidate as the packaged default: results and plots, weights, their ONNX bundle, architecture,
    card, record.

    Each file is written atomically; default.json, which names the weights' sha256, is written last."""
    import os

    from ..export import export_onnx
    from ..io import write_text_atomic
    from ..models import build_model, config_dict
    from ..models.config import make_config
    from ..store import sha256_of

    model_name = candidate.spec["model"]
    sha = sha256_of(candidate.weights)  # moving the file below does not change it
    # the CPU path's ONNX bundle (backends/onnx_backend.py), exported from the same weights and checked against them,
    # first: a failed export leaves the docs and the default as they were
    built = build_model(model_name, checkpoint=str(candidate.weights),
                        **{k: v for k, v in candidate.spec.items() if k != "model"})
    export_onnx(built, weights_dir / "default_onnx", weights_sha256=sha)
    write_results(results_by_suite, summary_, docs_dir, model_name)
    target = weights_dir / "default.pt"
    os.replace(candidate.weights, target)
    defaults = config_dict(make_config(model_name, {}))
    config = {k: v for k, v in candidate.spec.items() if k != "model" and defaults.get(k) != v}
    record = {"model": model_name, "config": config, "file": target.name, "sha256": sha,
              "size_mb": round(target.stat().st_size / 1e6, 2), "promoted": promoted,
              "status": status_line(summary_["dice"], goal), "card": "MODEL_CARD.md",
              "about": "medsam3d's packaged default (see its card: medsam3d models info default)",
              "heldout": summary_}
    write_text_atomic(weights_dir / "default.yaml", yaml.safe_dump(candidate.spec, sort_keys=False))
    write_card(weights_dir, docs_dir, summary_, results_by_suite, record, candidate.training)
    write_text_atomic(weights_dir / "default.json", json.dumps(record, indent=2) + "\n")
    return record


def write_results(results_by_suite: dict[str, dict], summary_: dict, docs_dir: Path, model_name: str) -> None:
    """Each suite's results JSON and plot, and the pooled plot, under ``docs_dir``."""
    from ..io import write_text_atomic
    from .evaluate import plot

    docs_dir.mkdir(parents=True, exist_ok=True)
    for name, results in results_by_suite.items():
        write_text_atomic(docs_dir / f"{name}.json", json.dumps(results, indent=2))
        plot(results, docs_dir / f"{name}.png")
    plot({"model": model_name, "dataset": "held-out split, every gate suite", "n_structures":
          summary_["n_structures"], "protocol": {"clicks": summary_["clicks"]}, "mean_dice": summary_["dice"],
          "baselines": {b: {"mean_dice": v} for b, v in summary_["baselines"].items()}}, docs_dir / "all.png")


def write_card(weights_dir: Path, docs_dir: Path, summary_: dict, results_by_suite: dict[str, dict], record: dict,
               training: Optional[str]) -> None:
    """The card's results block (and training block, when given), with links that work from where it lives."""
    import os

    from ..io import write_text_atomic
    from .card import replace_block, results_block

    card_path = weights_dir / "MODEL_CARD.md"
    try:  # links that work from where the card lives
        prefix = Path(os.path.relpath(docs_dir, weights_dir)).as_posix()
    except ValueError:  # another drive (Windows): an absolute path
        prefix = docs_dir.as_posix()
    card = replace_block(card_path.read_text(encoding="utf-8"), "results",
                         results_block(summary_, results_by_suite, record, prefix))
    if training is not None:
        card = replace_block(card, "training", training)
    write_text_atomic(card_path, card)


def remeasure_default(config: GateConfig, weights_dir: Path, docs_dir: Path, threads: Optional[int] = None,
                      device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    """Measure the packaged default again with the code as it is (same weights) and re-record its numbers: for a
    change to the Segmenter (``segmenter.REVISION``) or the protocol, not for a new model. -> its new record."""
    from ..io import write_text_atomic
    from .protocol import PROTOCOL

    record = current_default(weights_dir)
    if record is None:
        raise InputError(f"{weights_dir} holds no default.json to measure again")
    results, numbers = _measure(_default_segmenter(weights_dir, device, threads), config,
                                fingerprint(config, PROTOCOL), log)
    before = record["heldout"]["dice"]
    record.update(heldout=numbers, status=status_line(numbers["dice"], config.goal))
    write_results(results, numbers, docs_dir, record["model"])
    write_card(weights_dir, docs_dir, numbers, results, record, None)
    write_text_atomic(weights_dir / "default.json", json.dumps(record, indent=2) + "\n")
    for k, v in numbers["dice"].items():
        log(f"{k} click(s): {before.get(k, float('nan')):.4f} -> {v:.4f}")
    return record


def run_gate(source: Path, checkpoint: Optional[Path], config: GateConfig, weights_dir: Path, docs_dir: Path,
             training_md: Optional[Path] = None, threads: Optional[int] = None,
             device: str = "cpu", dry_run: bool = False, promoted: str = "",
             log: Callable[[str], None] = print) -> Decision:
    """Stage, evaluate, compare, and (unless refused or ``dry_run``) install the candidate as the default."""
    import shutil
    import tempfile
    import time

    from ..segmenter import Segmenter
    from .protocol import PROTOCOL

    if not (weights_dir / "MODEL_CARD.md").is_file():
        raise InputError(f"{weights_dir} holds no MODEL_CARD.md for the gate to fill in")
    if not dry_run:  # a promotion exports the ONNX bundle: say now, not after the evaluation, if it cannot
        from ..export import _onnxruntime

        _onnxruntime()
    staging = Path(tempfile.mkdtemp(prefix=".gate.", dir=weights_dir))  # same file system: os.replace works
    try:
        candidate = stage_candidate(Path(source), checkpoint, staging, training_md)
        key = fingerprint(config, PROTOCOL)
        current = current_default(weights_dir)
        current_dice = None
        if current is not None:
            recorded = current.get("heldout") or {}
            if recorded.get("fingerprint") == key:
                current_dice = recorded["dice"]
                log(f"current default: held-out numbers from its record (fingerprint {key})")
            else:  # protocol, suites or data changed since it was measured: measure it again, the same way
                log("current default: measured again (its record predates this protocol, suite or data)")
                seg = _default_segmenter(weights_dir, device, threads)
                current_dice = model_dice(run_suites(seg, config, baselines=False, log=log), config.clicks)
        seg = Segmenter(model=str(_spec_file(candidate, staging)), checkpoint=candidate.weights, device=device,
                        threads=threads)
        results, numbers = _measure(seg, config, key, log)
        decision = decide(numbers["dice"], current_dice, config.tolerance, config.improve_at)
        for line in decision.reasons:
            log(line)
        if decision.promote and not dry_run:
            record = write_default(candidate, results, numbers, weights_dir, docs_dir, config.goal,
                                   promoted or time.strftime("%Y-%m-%d"))
            log(f"wrote {weights_dir / 'default.pt'} (sha256 {record['sha256'][:16]}...), its card and "
                f"{docs_dir}/")
        return decision
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _measure(seg, config: GateConfig, key: str, log: Callable[[str], None]) -> tuple[dict, dict]:
    """The gate's measurement of a model: its held-out suites with both baselines and the README example ->
    (results by suite, summary numbers)."""
    results = run_suites(seg, config, baselines=True, log=log)
    numbers = summary(results, config, key)
    if config.example is not None:
        numbers["example"] = measure_example(seg, config.example)
        log(f"README example: Dice {numbers['example']['dice']:.3f} against its label")
    return results, numbers


def _default_segmenter(weights_dir: Path, device: str, threads: Optional[int]):
    """A Segmenter on the packaged default in ``weights_dir`` (default.yaml + default.pt), as the gate measures it."""
    from ..segmenter import Segmenter

    return Segmenter(model=str(weights_dir / "default.yaml"), checkpoint=weights_dir / "default.pt", device=device,
                     threads=threads)


def _spec_file(candidate: Candidate, staging: Path) -> Path:
    path = staging / "default.yaml"
    path.write_text(yaml.safe_dump(candidate.spec, sort_keys=False))
    return path
