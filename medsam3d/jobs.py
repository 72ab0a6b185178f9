"""Segmentation jobs: one scan, its output paths and its objects' prompts -> a written label map.

The command line builds jobs from its options or from a ``--batch`` JSON-lines file and runs them through the one
``Segmenter``; each job is checked before any work (paths, formats) and writes atomically.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import check_writable, read_volume, write_volume, zeros_ijk
from .preview import check_preview_path
from .prompts import Prompts, check_frame, parse_numbers, resolve, to_ijk


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


def share_for_rank(jobs: list[dict]) -> tuple[int, int, list[dict]]:
    """-> (rank, world size, this process's jobs): under torchrun (``RANK``, ``WORLD_SIZE``) each rank takes every
    world-th job from its own rank on; a lone process takes them all."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return rank, world, jobs[rank::world]


def run_job(segmenter, job: dict, say) -> dict:
    """One scan: read, segment every object into one label map, write atomically. -> report entry."""
    started = time.perf_counter()
    volume = segmenter.set_volume(job["input"], job.get("series"), job.get("modality", "auto"))
    prior = read_volume(job["mask"]).array if job.get("mask") else None
    if prior is not None and prior.shape != volume.shape:
        raise InputError(f"--mask has shape {prior.shape}, the scan {volume.shape}")
    # every object's prompts are checked before anything is printed or computed
    resolved = [_resolve_object(volume, o, prior) for o in job["objects"]]
    if job.get("probabilities") and any(o.get("clicks") for o in job["objects"]):
        raise InputError("--probabilities is not available for click sequences (\"clicks\" in --prompts)")
    say(f"intensity handling: {segmenter.modality.upper()}")
    labels = zeros_ijk(volume.shape, np.uint8)
    probs = zeros_ijk(volume.shape, np.float32) if job.get("probabilities") else None
    objects = []
    session = None
    for obj, p in zip(job["objects"], resolved):
        for line in p.describe(volume):
            say(f"label {obj['label']}: {line}")
        if obj.get("clicks"):
            from .session import Session

            session = session or Session(segmenter)
            mask, iou = _replay_clicks(session, obj, prior)
            entry = {"clicks": len(obj["clicks"]), "predicted_iou": iou}
        else:
            result = segmenter.predict_prompts(p, probabilities=probs is not None)
            mask = result.mask.array
            if probs is not None:
                np.maximum(probs, result.probabilities.array, out=probs)
            entry = {"windows": len(result.windows), "predicted_iou": result.iou, "timings_s": result.timings}
        np.copyto(labels, np.uint8(obj["label"]), where=mask.astype(bool, copy=False))
        volume_ml = float(np.count_nonzero(mask) * np.prod(volume.spacing) / 1000.0)
        objects.append({"label": obj["label"], "prompts": p.describe(volume), "volume_ml": volume_ml, **entry})
        say(f"label {obj['label']}: {volume_ml:.1f} ml" + (f" in {entry['windows']} window(s)" if "windows" in entry
                                                           else f" after {entry['clicks']} click(s)"))
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


def _resolve_object(volume, obj: dict, prior):
    """An object's prompts in voxels, every one checked; a click sequence as its points and labels."""
    if not obj.get("clicks"):
        return resolve(volume, obj["point"], obj["negative"], obj["box"], prior, obj["coords"])
    points = [to_ijk(volume, c["point"], obj["coords"], "click") for c in obj["clicks"]]
    labels = np.array([1 if c["positive"] else 0 for c in obj["clicks"]], dtype=np.int64)
    if obj["box"] is None and prior is None and not labels[0]:
        raise InputError(f"label {obj['label']}: the first click must be positive (or give a box or --mask)")
    box = resolve(volume, box=obj["box"], frame=obj["coords"]).box if obj["box"] is not None else None
    return Prompts(np.array(points).reshape(-1, 3), labels, box, None)


def _replay_clicks(session, obj: dict, prior) -> tuple[np.ndarray, list[float]]:
    """A click sequence as an interactive session plays it: each click refines the object's last answer (what
    ``medsam3d serve`` does click by click). -> (mask, predicted IoU of the last answer)."""
    name = str(obj["label"])
    change = None
    if prior is not None:
        change = session.set_mask(name, prior)
    if obj["box"] is not None:
        change = session.add_box(name, obj["box"], obj["coords"])
    for click in obj["clicks"]:
        change = session.add_point(name, click["point"], click["positive"], obj["coords"])
    return session.mask(name), change.iou


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
        clicks = item.get("clicks")
        if clicks is not None and (not isinstance(clicks, list) or not clicks or item.get("point")
                                   or item.get("negative")):
            raise InputError(f"{where} entry {n}: \"clicks\" must be a non-empty list of {{\"point\": [x, y, z], "
                             f"\"positive\": true|false}}, instead of \"point\" and \"negative\"")
        objects.append({
            "label": label,
            "clicks": [click(c, f"{where} entry {n}") for c in clicks] if clicks else None,
            "point": [triplet(p) for p in item.get("point", [])],
            "negative": [triplet(p) for p in item.get("negative", [])],
            "box": parse_numbers(",".join(map(str, item["box"])), 6, "box") if item.get("box") else None,
            "coords": check_frame(item.get("coords", frame)),
        })
    return objects


def click(value, where: str) -> dict:
    """{"point": [x, y, z], "positive": bool (default true)} of an ordered click sequence."""
    if not isinstance(value, dict) or "point" not in value or not isinstance(value.get("positive", True), bool):
        raise InputError(f"{where}: each click must be {{\"point\": [x, y, z], \"positive\": true|false}}")
    return {"point": triplet(value["point"]), "positive": value.get("positive", True)}


def triplet(value) -> list[float]:
    text = value if isinstance(value, str) else ",".join(map(str, value))
    return parse_numbers(text, 3, "point")
