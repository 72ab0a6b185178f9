"""The ``medsam3d`` command line. Thin: parse, call the library, print.

Errors a user can cause print one line and exit with code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from typer.core import TyperCommand

from . import __version__
from .errors import InputError
from .io import write_text_atomic
from .jobs import check_job, objects_from_json, read_jobs, run_job, share_for_rank
from .intensity import check_modality
from .prompts import check_frame, parse_numbers

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Promptable 3D segmentation of CT and MRI: click, get the 3D mask in the scan's geometry.")
err = Console(stderr=True)
_state = {"debug": False, "outputs_closed": False}  # outputs_closed: see run()

SEGMENT_EXAMPLES = """

Examples:

\b
  medsam3d segment ct.nii.gz --point 250,180,95 -o liver.nii.gz --model sam-med3d --checkpoint turbo.pth
  medsam3d segment ct.nii.gz --point -60.5,20,110 --coords ras -o mask.nrrd
  medsam3d segment dicom_dir/ --series 1.2.840.. --point 200,210,40 --negative 180,200,40 -o m.nii.gz
  medsam3d segment ct.nii.gz --prompts objects.json -o labels.nii.gz    (a label per object)
  medsam3d segment ct.nii.gz --point 250,180,95 -o liver.nii.gz --preview liver.png
"""


@app.callback(invoke_without_command=True)
def _root(debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
          version: bool = typer.Option(False, "--version", help="print the version and exit")) -> None:
    _state["debug"] = debug
    if version:
        typer.echo(f"medsam3d {__version__}")
        raise typer.Exit(0)


# options several commands share
_MODEL = typer.Option("default", "--model", help="model name, stored name or YAML config")
_CHECKPOINT = typer.Option(None, "--checkpoint", help="weights for --model")
_DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or mps")
_THREADS = typer.Option(None, "--threads", help="CPU threads")
_BACKEND = typer.Option("torch", "--backend", help="torch; onnxruntime: the CPU path without torch (the packaged "
                                                   "default, or --model an exported ONNX bundle; medsam3d[onnx]); "
                                                   "auto: onnxruntime where it can run the model, else torch")
# how a click refines an object that spans several windows: the same default for `serve` and for `segment`'s click
# replays, so that replaying a session's clicks gives its masks
_REFINEMENT = typer.Option(True, "--incremental/--every-window",
                           help="a click re-decodes only the windows it changes (objects spanning many windows stay "
                                "click-fast; see the README), or every window of the object")


@app.command(help="Segment the structure under the prompts; write a mask with the input's exact geometry."
                  + SEGMENT_EXAMPLES)
def segment(
    input: Optional[Path] = typer.Argument(None, help="scan: .nii/.nii.gz/.nrrd/.mha/.mhd, a DICOM folder or a "
                                                      ".zip of one"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="mask file: .nii.gz, .nii, .nrrd or .mha"),
    point: List[str] = typer.Option([], "--point", help="positive point X,Y,Z (repeatable)"),
    negative: List[str] = typer.Option([], "--negative", help="negative point X,Y,Z (repeatable)"),
    box: Optional[str] = typer.Option(None, "--box", help="box X0,Y0,Z0,X1,Y1,Z1 (models that take boxes)"),
    mask: Optional[Path] = typer.Option(None, "--mask", help="a previous mask of this scan to refine"),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSON list of objects -> one label map"),
    coords: str = typer.Option("ijk", "--coords", help="frame of the coordinates: ijk (voxels), ras or lps (mm)"),
    series: Optional[str] = typer.Option(None, "--series", help="DICOM SeriesInstanceUID when a folder holds several"),
    modality: str = typer.Option("auto", "--modality", help="intensity handling: ct (Hounsfield units), mr (any "
                                                            "other scan), or auto (ct when the scan holds air)"),
    batch: Optional[Path] = typer.Option(None, "--batch", help="JSON-lines file of jobs (input, output, prompts); "
                                                               "under torchrun the ranks share them out"),
    model: str = _MODEL,
    checkpoint: Optional[Path] = _CHECKPOINT,
    device: str = _DEVICE,
    threads: Optional[int] = _THREADS,
    backend: str = _BACKEND,
    max_windows: int = typer.Option(8, "--max-windows", min=1,
                                    help="most 128^3 windows an object may grow into"),
    incremental: bool = _REFINEMENT,
    probabilities: Optional[Path] = typer.Option(None, "--probabilities", help="also write a float probability map"),
    preview: Optional[Path] = typer.Option(None, "--preview", help="also write a PNG: axial, coronal and sagittal "
                                                                   "slices through the first click, mask outlined"),
    output_type: str = typer.Option("image", "--output-type", help="image (from -o's extension) or dicom-seg "
                                                                   "(DICOM input; needs medsam3d[dicom])"),
    report: Optional[Path] = typer.Option(None, "--report", help="write a JSON report of the run"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="print nothing but errors"),
    verbose: bool = typer.Option(False, "--verbose", help="print timings"),
) -> None:
    if output_type not in ("image", "dicom-seg"):
        raise InputError(f"unknown --output-type {output_type!r}; use image or dicom-seg")
    started = time.perf_counter()
    say = (lambda *a: None) if quiet else (lambda msg: err.print(msg, highlight=False))
    frame = check_frame(coords)
    modality = check_modality(modality, "--modality")
    jobs = _jobs_from_options(batch, frame, input, output, point, negative, box, mask, prompts, series, probabilities,
                              preview, dicom_seg=output_type == "dicom-seg")
    for job in jobs:
        job.setdefault("modality", modality)
    rank, world, mine = share_for_rank(jobs)
    if batch is None:
        check_job(jobs[0])  # everything that can be checked before the work is checked before the work
    if not mine:  # under torchrun, more ranks than jobs: this one has nothing to do
        return
    segmenter = _segmenter(model, checkpoint, device, threads, max_windows, backend, spinner=not quiet,
                           incremental=incremental)
    runs, failed = _run_jobs(segmenter, mine, batched=batch is not None, say=say)
    if report:
        _write_report(report, segmenter, model, checkpoint, rank, world, runs, failed, started)
    if verbose:
        say(f"total {time.perf_counter() - started:.2f} s")
    _state["outputs_closed"] = True  # every mask and report is written, renamed into place and closed
    if batch is not None:
        say(f"rank {rank}/{world}: {len(runs)} done, {failed} failed")
        if failed:
            raise typer.Exit(2)


def _jobs_from_options(batch, frame, input, output, point, negative, box, mask, prompts, series, probabilities,
                       preview, dicom_seg: bool) -> list[dict]:
    """``segment``'s jobs: those of the --batch file, or the one the options describe (the two do not mix)."""
    if batch is not None:
        if input or output or point or negative or box or prompts or mask or probabilities or preview:
            raise InputError("--batch takes scans, outputs and prompts from its file (\"preview\" per job); "
                             "give no INPUT, -o, --preview or prompts")
        return read_jobs(batch, frame)
    if input is None or output is None:
        raise InputError("give a scan and -o OUTPUT (or --batch jobs.jsonl)")
    return [{"input": input, "output": output, "mask": mask, "probabilities": probabilities, "preview": preview,
             "series": series, "objects": _objects_from_options(point, negative, box, prompts, frame),
             "dicom_seg": dicom_seg}]


def _segmenter(model: str, checkpoint: Optional[Path], device: str, threads: Optional[int], max_windows: int,
               backend: str, spinner: bool, incremental: bool = False):
    from .segmenter import Segmenter

    if checkpoint is not None and not checkpoint.is_file():
        raise InputError(f"checkpoint not found: {checkpoint}")
    backend, device = _backend_and_device(backend, device, model, checkpoint)
    segmenter = Segmenter(model=model, checkpoint=checkpoint, device=device, threads=threads,
                          max_windows=max_windows, backend=backend, incremental=incremental)
    if spinner:  # a spinner on the terminal for the slow steps (nothing when stderr is not a terminal)
        segmenter.on_step = lambda name: err.status(name, spinner="dots")
    return segmenter


def _run_jobs(segmenter, jobs: list[dict], batched: bool, say) -> tuple[list[dict], int]:
    """Every job in turn -> (report entries, failures). A single job's error ends the command; a batch job's is
    printed and the next job runs."""
    runs, failed = [], 0
    for n, job in enumerate(jobs, start=1):
        try:
            if batched:
                check_job(job)
                say(f"job {n}/{len(jobs)}: {job['input']}")
            runs.append(run_job(segmenter, job, say))
        except InputError as exc:
            if not batched:
                raise
            failed += 1
            err.print(f"medsam3d: job {job['input']}: error: {exc}", highlight=False, markup=False, soft_wrap=True)
    return runs, failed


def _write_report(path: Path, segmenter, model: str, checkpoint: Optional[Path], rank: int, world: int,
                  runs: list[dict], failed: int, started: float) -> None:
    """--report: the weights, every job's report entry, the failures and the time; one file per rank."""
    if world != 1:
        path = path.with_name(f"{path.stem}.rank{rank}{path.suffix}")
    write_text_atomic(path, json.dumps({
        "medsam3d": __version__, "model": getattr(segmenter.model, "name", str(model)),
        "checkpoint": str(checkpoint) if checkpoint else None, "checkpoint_sha256": segmenter.weights_sha256,
        "rank": rank, "world_size": world, "runs": runs, "failed": failed,
        "total_s": time.perf_counter() - started,
    }, indent=2))


def _training_command(kind: str, config: Path, out: Path, resume: bool, overrides: List[str]) -> None:
    from .training.config import load_config

    cfg = load_config(config, overrides)
    if kind == "distill":
        from .training.distill import run_distill

        run_distill(cfg, out, resume)
    else:
        from .training.trainer import run_interactive

        run_interactive(cfg, out, resume, kind)


_CONFIG = typer.Option(..., "--config", help="YAML run config (see configs/)")
_OUT = typer.Option(..., "--out", help="folder for checkpoints, metrics and the final model")
_RESUME = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint")
_SET = typer.Option([], "--set", help="override a config value: key.sub=value (repeatable)")


@app.command(help="Train a model from scratch with the interactive (simulated-click) loop. "
                  "Runs unchanged under torchrun --nproc_per_node=N -m medsam3d train ...")
def train(config: Path = _CONFIG, out: Path = _OUT, resume: bool = _RESUME, set: List[str] = _SET) -> None:
    _training_command("train", config, out, resume, set)


@app.command(help="Fine-tune trained weights (model.checkpoint) on your own cohort with the interactive loop.")
def finetune(config: Path = _CONFIG, out: Path = _OUT, resume: bool = _RESUME, set: List[str] = _SET) -> None:
    _training_command("finetune", config, out, resume, set)


@app.command(help="Distil a fast student from a teacher: layer-wise progressive feature matching, then masks.")
def distill(config: Path = _CONFIG, out: Path = _OUT, resume: bool = _RESUME, set: List[str] = _SET) -> None:
    _training_command("distill", config, out, resume, set)


@app.command(help="Evaluate a model with the click protocol on an nnU-Net-layout dataset, against region growing "
                  "and the random walker run through the same protocol.")
def evaluate(
    dataset: Path = typer.Argument(..., help="dataset folder: dataset.json, imagesTr, labelsTr"),
    model: str = _MODEL,
    checkpoint: Optional[Path] = _CHECKPOINT,
    clicks: str = typer.Option("1,3,5,10", "--clicks", help="click counts to report, e.g. 1,3,5,10"),
    out: Path = typer.Option(..., "--out", help="results JSON"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Dice-against-clicks figure (PNG)"),
    cases: Optional[str] = typer.Option(None, "--cases", help="comma-separated case ids (default: all)"),
    labels: Optional[str] = typer.Option(None, "--labels", help="comma-separated label values (default: all)"),
    min_size_ml: float = typer.Option(1.0, "--min-size-ml", help="smallest target volume"),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="run the classical baselines too"),
    no_model: bool = typer.Option(False, "--no-model", help="the baselines alone (--model is not loaded)"),
    device: str = _DEVICE,
    threads: Optional[int] = _THREADS,
    backend: str = _BACKEND,
    incremental: bool = typer.Option(False, "--incremental/--every-window",
                                     help="how a click refines: only the windows it changes (serve's default), or "
                                          "every window (the model card's numbers)"),
) -> None:
    import warnings

    from .evaluation.evaluate import evaluate as run_evaluation
    from .evaluation.evaluate import plot as draw
    from .evaluation.progress import LiveProgress
    from .io import check_writable

    if not (dataset / "dataset.json").is_file():
        raise InputError(f"{dataset} is not a dataset folder (no dataset.json)")
    if no_model and not baselines:
        raise InputError("--no-model with --no-baselines leaves nothing to evaluate")
    counts = [int(c) for c in parse_numbers(clicks, len(clicks.split(",")), "--clicks")]
    for path in (out, plot) if plot is not None else (out,):
        check_writable(path.with_suffix(".nii.gz"))  # folder exists and is writable, before any work
    methods, extra = _evaluation_methods(None if no_model else model, checkpoint, device, threads, baselines,
                                         backend, incremental)
    with warnings.catch_warnings(), LiveProgress(err) as progress:
        if not _state["debug"]:  # libraries' warnings (scikit-image's "probability range", ...) only with --debug
            warnings.simplefilter("ignore")
        results = run_evaluation(dataset, methods, counts, min_size_ml,
                                 cases=cases.split(",") if cases else None,
                                 label_values=[int(v) for v in labels.split(",")] if labels else None,
                                 log=progress.log, out=out, extra=extra, progress=progress,
                                 model=None if no_model else "")
    if plot is not None:
        draw(results, plot)
    err.print(_evaluation_summary(results, out), highlight=False, soft_wrap=True)


def _evaluation_methods(model: Optional[str], checkpoint: Optional[Path], device: str, threads: Optional[int],
                        baselines: bool, backend: str = "torch", incremental: bool = False) -> tuple[dict, dict]:
    """-> ({name: method}, keys added to the results): the model first (unless ``model`` is None), then the
    baselines."""
    from .evaluation.methods import ModelMethod, RandomWalker, RegionGrowing

    methods, extra = {}, {}
    if model is not None:
        from .segmenter import Segmenter

        backend, device = _backend_and_device(backend, device, model, checkpoint)
        segmenter = Segmenter(model=model, checkpoint=checkpoint, device=device, threads=threads, backend=backend,
                              incremental=incremental)
        name = getattr(segmenter.model, "name", model)
        methods[name] = ModelMethod(segmenter, name)
        extra["checkpoint_sha256"] = segmenter.weights_sha256
        extra["backend"] = backend
        extra["refinement"] = "incremental" if incremental else "every window"
    if baselines:
        methods.update({"region_growing": RegionGrowing(), "random_walker": RandomWalker()})
    return methods, extra


def _evaluation_summary(results: dict, out: Path) -> str:
    """The line ``evaluate`` ends with: mean Dice per method (and failures) -> where the results went."""
    failed = {m: v["n_failed"] for m, v in [(results["model"], results), *results["baselines"].items()]
              if m and v.get("n_failed")}
    summary = {m: v for m, v in [(results["model"], results.get("mean_dice")),
                                 *((b, v["mean_dice"]) for b, v in results["baselines"].items())] if m}
    return (f"mean Dice {json.dumps(summary)}" + (f"; failed: {json.dumps(failed)}" if failed else "")
            + f" -> {out}")


@app.command(help="Interactive sessions over JSON lines (the 3D Slicer module's worker): one request per line "
                  "on stdin, one reply per line on stdout; or, with --socket, over TCP with a token. Protocol: "
                  "medsam3d/serve/protocol.py.")
def serve(
    stdio: bool = typer.Option(False, "--stdio", help="serve stdin/stdout (exits when stdin closes)"),
    socket: Optional[str] = typer.Option(None, "--socket", help="PORT or HOST:PORT to listen on (host defaults to "
                                                                "127.0.0.1: loopback only unless told otherwise)"),
    token: Optional[str] = typer.Option(None, "--token", help="with --socket: every request must carry "
                                                              "\"token\": TOKEN (or set MEDSAM3D_TOKEN)"),
    model: str = _MODEL,
    checkpoint: Optional[Path] = _CHECKPOINT,
    device: str = _DEVICE,
    threads: Optional[int] = _THREADS,
    backend: str = _BACKEND,
    incremental: bool = _REFINEMENT,
) -> None:
    from .serve.transport import parse_address, serve_socket, serve_stdio, token_from_env_or
    from .serve.worker import Worker

    if stdio == (socket is not None):
        raise InputError("give exactly one of --stdio or --socket PORT")
    token = token_from_env_or(token)
    if socket is not None:
        if not token:
            raise InputError("--socket needs --token TOKEN (or MEDSAM3D_TOKEN): any process could connect")
        try:
            host, port = parse_address(socket)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    if checkpoint is not None and not checkpoint.is_file():
        raise InputError(f"checkpoint not found: {checkpoint}")
    backend, device = _backend_and_device(backend, device, model, checkpoint)
    worker = Worker.for_model(model, str(checkpoint) if checkpoint else None, device, threads, backend, incremental)
    if stdio:
        raise typer.Exit(serve_stdio(worker))

    def ready(bound: int) -> None:
        typer.echo(f"listening on {host}:{bound}")
        sys.stdout.flush()

    raise typer.Exit(serve_socket(worker, host, port, token, ready))


models_app = typer.Typer(no_args_is_help=True, help="The local model store ($MEDSAM3D_HOME).")
app.add_typer(models_app, name="models")


class _NamesInHelp(TyperCommand):
    """Help that names what the model registry ({architectures}) or the store ({published}) knows, filled in when
    the help is shown: the registry imports torch, which the command line loads only for commands that need it."""

    def format_help(self, ctx, formatter) -> None:
        from .models import available_models
        from .store import REMOTE

        names = {"architectures": ", ".join(available_models()), "published": " or ".join(REMOTE)}
        for param in self.params:
            if getattr(param, "help", None):
                param.help = param.help.format(**names)
        super().format_help(ctx, formatter)


@models_app.command("list", help="Models --model can name: installed, and published ones pull knows.")
def models_list() -> None:
    from . import store

    for row in store.list_models():
        state = "installed" if row["installed"] else "not pulled"
        about = row.get("about", row.get("source", ""))
        if row["name"] == "default":
            dice = (row.get("heldout") or {}).get("dice", {})
            about = (f"held-out Dice {dice.get('1', float('nan')):.3f} at 1 click, {dice.get('5', float('nan')):.3f}"
                     f" at 5; {row.get('status', 'no status recorded')}")
        typer.echo(f"{row['name']:<20} {row['model']:<14} {state:<11} {about}")


@models_app.command("info", help="One model: the default's model card, or what the store knows (JSON).")
def models_info(name: str = typer.Argument(...),
                as_json: bool = typer.Option(False, "--json", help="the stored record as JSON")) -> None:
    from . import store

    row = store.info(name)
    card = store.PACKAGED / row["card"] if name == "default" and row.get("card") else None
    if card is not None and card.is_file() and not as_json:
        typer.echo(card.read_text(encoding="utf-8"))
    else:
        typer.echo(json.dumps(row, indent=2, default=str))


@models_app.command("import", cls=_NamesInHelp,
                    help="Copy a local checkpoint into the store (checked against its architecture).")
def models_import(
    path: Path = typer.Argument(..., help="checkpoint file"),
    name: str = typer.Option(..., "--name", help="the name --model will use"),
    model: str = typer.Option(..., "--model", help="architecture: {architectures}"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with architecture keys (non-default sizes)"),
    decoder: Optional[str] = typer.Option(None, "--decoder", help="store name to take the decoder from"),
) -> None:
    from . import store

    keys = _yaml_mapping(config) if config else {}
    keys.pop("model", None)
    entry = store.import_checkpoint(path, name, model, keys, decoder)
    typer.echo(f"imported {name} ({entry['model']}), sha256 {entry['sha256']}")


@models_app.command("pull", cls=_NamesInHelp, help="Download a published checkpoint (resumable; verified; checked).")
def models_pull(
    name: str = typer.Argument(..., help="{published}"),
    url: Optional[str] = typer.Option(None, "--url", help="a mirror of the same file"),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="expected checksum"),
) -> None:
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from . import store

    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task(f"pull {name}", total=None)
        entry = store.pull(name, url=url, sha256=sha256,
                           progress=lambda done, total: bar.update(task, completed=done, total=total))
    typer.echo(f"pulled {name} ({entry['model']}), sha256 {entry['sha256']}")


export_app = typer.Typer(no_args_is_help=True, help="Export a model for other runtimes.")
app.add_typer(export_app, name="export")


@export_app.command("onnx", help="Write an ONNX bundle (encoder.onnx, decoder.onnx, model.json) for the onnxruntime "
                                 "backend; its graphs are checked against PyTorch before the folder is written.")
def export_onnx_command(
    model: str = _MODEL,
    checkpoint: Optional[Path] = _CHECKPOINT,
    output: Path = typer.Option(..., "-o", "--output", help="bundle folder (replaced if it holds a bundle)"),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: 8-bit weights (smaller, a little faster "
                                           "on CPU; logits move by up to a few tenths)"),
    tolerance: float = typer.Option(1e-3, "--tolerance", help="largest difference from PyTorch's outputs allowed "
                                    "(fp32 graphs)"),
) -> None:
    if quantize not in (None, "int8"):
        raise InputError(f"unknown --quantize {quantize!r}; the one there is: int8")
    from .backends.torch_backend import load_model
    from .export import export_onnx

    built, sha = load_model(model, checkpoint, "cpu")
    meta = export_onnx(built, output, quantize=quantize, tolerance=tolerance, weights_sha256=sha)
    check = meta["check"]
    typer.echo(f"wrote {output} ({meta['model']}, {meta['quantize'] or 'fp32'}); max abs difference from PyTorch: "
               f"embedding {check['embedding_max_abs_diff']:.2e}, logits {check['logits_max_abs_diff']:.2e}, "
               f"IoU {check['iou_max_abs_diff']:.2e}; lowest mask Dice {check['mask_dice_min']:.4f}")
    if meta["min_tokens"]:
        typer.echo("note: this bundle needs a click or a box with a mask prompt (a mask alone did not export)")


def _yaml_mapping(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a mapping of config keys")
    return data


def _objects_from_options(point, negative, box, prompts_file, frame) -> list[dict]:
    if prompts_file is not None:
        if point or negative or box:
            raise InputError("give prompts either on the command line or in --prompts, not both")
        try:
            data = json.loads(Path(prompts_file).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read --prompts {prompts_file}: {exc}") from None
        return objects_from_json(data, frame, "--prompts")
    return [{
        "label": 1,
        "point": [parse_numbers(p, 3, "--point") for p in point],
        "negative": [parse_numbers(p, 3, "--negative") for p in negative],
        "box": parse_numbers(box, 6, "--box") if box else None,
        "coords": frame,
    }]


def _backend_and_device(backend: str, device: str, model, checkpoint) -> tuple[str, str]:
    """--backend and --device -> the backend that runs (auto decided) and its device. onnxruntime runs on the CPU,
    decided without importing torch; torch resolves --device auto to a GPU when there is one."""
    from .backends import choose_backend

    backend = choose_backend(backend, model, checkpoint, device)
    if backend == "onnxruntime":
        return backend, "cpu" if device == "auto" else device
    return backend, _device(device)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda", "mps"):
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device mps asked for, but MPS is not available")
    return name


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    _state["outputs_closed"] = False  # set by this run's segment, not an earlier in-process one
    debug = "--debug" in args
    try:
        code = app(args=args, prog_name="medsam3d", standalone_mode=False)
        if isinstance(code, int):  # click returns typer.Exit's code instead of raising it here
            return code
    except InputError as exc:
        if debug:
            raise
        err.print(f"medsam3d: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err.print("medsam3d: interrupted", markup=False)
        return 130
    except Exception as exc:  # usage errors (click's or typer's own) and the rest
        if callable(getattr(exc, "show", None)) and hasattr(exc, "exit_code"):
            exc.show()
            return int(exc.exit_code) or 2
        if debug:
            raise
        err.print(f"medsam3d: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                  markup=False, highlight=False, soft_wrap=True)
        return 1
    return 0


FAST_EXIT_OFF = "MEDSAM3D_NO_FAST_EXIT"  # set to 1 for the interpreter's normal shutdown after segment


def run() -> None:
    """The process entry point (the ``medsam3d`` script and ``python -m medsam3d``): ``main()``, then exit.

    Once ``segment`` has written, renamed into place and closed all its outputs, nothing is left to do but the
    interpreter's teardown of every module, which for torch is a good part of the time a clinician waits for one
    mask (``python scripts/bench_segment.py`` times both ways). So the exit handlers run, the streams are
    flushed, and the process ends there. Every other command, and every error, exits normally. Tests call
    ``main()``, which never exits."""
    code = main()
    if _state["outputs_closed"] and not os.environ.get(FAST_EXIT_OFF):
        atexit._run_exitfuncs()  # what a normal exit runs first: logging.shutdown, temporary files, ...
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
