"""Segmentation jobs: one scan, its output paths and its objects' prompts -> a written label map.

The command line builds jobs from its options or from a ``--batch`` JSON-lines file and runs them through the one
``Segmenter``; each job is checked before any work (paths, formats) and writes atomically.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import check_writable, read_volume, write_volume, zeros_ijk
from .preview import check_preview_path
from .prompts import check_frame, parse_numbers, resolve


def check_job(job: dict) -> None:
    """Everything about a job's paths that can be checked before any work: input exists, outputs (and the
    preview PNG) writable, no output overwrites the input or another output, DICOM SEG only for DICOM folders."""
    inp, out, prob = job["input"], job["output"], job.get("probabilities")
    if job.get("dicom_seg"):
        if not Path(inp).is_dir():
            raise InputError("--output-type dicom-seg needs a DICOM folder as input (unzip a .zip first)")
        if not str(out).lower().endswith(".dcm"):
            raise InputError("--output-type dicom-seg writes a .dcm file: give -o NAME.dcm")
    for target in [out] + ([prob] if prob else []):
        if not (job.get("dicom_seg") and target == out):
            check_writable(target)
        elif not Path(target).parent.is_dir():
            raise InputError(f"output folder does not exist: {Path(target).parent}")
        if inp.exists() and target.exists() and target.resolve() == inp.resolve():
            raise InputError(f"output {target} is the input; medsam3d never overwrites an input")
    if prob and Path(prob).resolve() == Path(out).resolve():
        raise InputError("--probabilities must be a different file from --output")
    if job.get("preview"):
        preview = check_preview_path(job["preview"])
        for other, what in ((inp, "the input"), (out, "--output"), (prob, "--probabilities")):
            if other and preview.resolve() == Path(other).resolve():
                raise InputError(f"--preview {preview} is {what}; give the preview its own .png file")
    if not inp.exists():
        raise InputError(f"input not found: {inp}")


def run_job(segmenter, job: dict, say) -> dict:
    """One scan: read, segment every object into one label map, write atomically. -> report entry."""
    started = time.perf_counter()
    volume = segmenter.set_volume(job["input"], job.get("series"), job.get("modality", "auto"))
    prior = read_volume(job["mask"]).array if job.get("mask") else None
    if prior is not None and prior.shape != volume.shape:
        raise InputError(f"--mask has shape {prior.shape}, the scan {volume.shape}")
    # every object's prompts are checked before anything is printed or computed
    resolved = [resolve(volume, o["point"], o["negative"], o["box"], prior, o["coords"]) for o in job["objects"]]
    say(f"intensity handling: {segmenter.modality.upper()}")
    labels = zeros_ijk(volume.shape, np.uint8)
    probs = zeros_ijk(volume.shape, np.float32) if job.get("probabilities") else None
    objects = []
    for obj, p in zip(job["objects"], resolved):
        for line in p.describe(volume):
            say(f"label {obj['label']}: {line}")
        result = segmenter.predict_prompts(p, probabilities=probs is not None)
        np.copyto(labels, np.uint8(obj["label"]), where=result.mask.array.astype(bool, copy=False))
        if probs is not None:
            np.maximum(probs, result.probabilities.array, out=probs)
        objects.append({"label": obj["label"], "prompts": p.describe(volume), "windows": len(result.windows),
                        "volume_ml": result.volume_ml, "predicted_iou": result.iou, "timings_s": result.timings})
        say(f"label {obj['label']}: {result.volume_ml:.1f} ml in {len(result.windows)} window(s)")
    if job.get("dicom_seg"):
        from .dicom_seg import write_dicom_seg
        from .io import dicom_series_files

        _, files = dicom_series_files(Path(job["input"]), job.get("series"))
        write_dicom_seg(labels, files, job["output"], getattr(segmenter.model, "name", "medsam3d"))
    else:
        write_volume(volume.with_array(labels), job["output"])
    if probs is not None:
        write_volume(volume.with_array(probs), job["probabilities"])
    say(f"wrote {job['output']}")
    if job.get("preview"):
        from .preview import write_preview

        write_preview(job["preview"], volume, labels, resolved, segmenter.modality, Path(job["input"]).name)
        say(f"wrote {job['preview']}")
    return {"input": str(job["input"]), "output": str(job["output"]), "modality": segmenter.modality,
            "shape": list(volume.shape), "spacing": volume.spacing.tolist(), "objects": objects,
            **({"preview": str(job["preview"])} if job.get("preview") else {}),
            "seconds": time.perf_counter() - started}


def read_jobs(path: Path, frame: str) -> list[dict]:
    """--batch file: one JSON object per line with input, output and prompts, optionally mask, probabilities,
    preview (a PNG), series, modality, coords (paths relative to the file)."""
    if not path.is_file():
        raise InputError(f"batch file not found: {path}")
    jobs = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{path} line {n} is not JSON: {exc}") from None
        if not isinstance(item, dict) or "input" not in item or "output" not in item:
            raise InputError(f"{path} line {n} needs at least \"input\" and \"output\"")
        at = lambda key: (path.parent / item[key]) if item.get(key) else None  # noqa: E731
        item_frame = check_frame(item.get("coords", frame))
        objects = (objects_from_json(item["prompts"], item_frame, f"{path} line {n}") if "prompts" in item
                   else objects_from_json([item], item_frame, f"{path} line {n}"))
        jobs.append({"input": at("input"), "output": at("output"), "mask": at("mask"),
                     "probabilities": at("probabilities"), "preview": at("preview"), "series": item.get("series"),
                     "objects": objects,
                     **({"modality": str(item["modality"]).lower()} if item.get("modality") else {})})
    if not jobs:
        raise InputError(f"batch file {path} holds no jobs")
    return jobs



def objects_from_json(data, frame: str, where: str) -> list[dict]:
    """[{"point": [[x, y, z], ...], "negative": [...], "box": [6 numbers], "label": n, "coords": f}, ...]"""
    if not isinstance(data, list) or not data:
        raise InputError(f"{where} must hold a JSON list of objects, e.g. [{{\"point\": [[x, y, z]]}}]")
    objects = []
    for n, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise InputError(f"{where} entry {n} is not an object")
        try:
            label = int(item.get("label", n))
        except (TypeError, ValueError):
            raise InputError(f"{where} entry {n}: label must be an integer") from None
        if not 1 <= label <= 255:
            raise InputError(f"{where} entry {n}: label must be 1..255, got {label}")
        objects.append({
            "label": label,
            "point": [triplet(p) for p in item.get("point", [])],
            "negative": [triplet(p) for p in item.get("negative", [])],
            "box": parse_numbers(",".join(map(str, item["box"])), 6, "box") if item.get("box") else None,
            "coords": check_frame(item.get("coords", frame)),
        })
    return objects


def triplet(value) -> list[float]:
    text = value if isinstance(value, str) else ",".join(map(str, value))
    return parse_numbers(text, 3, "point")
