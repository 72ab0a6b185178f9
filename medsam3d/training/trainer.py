"""The machinery every training command shares, and ``train`` / ``finetune`` (the interactive stage).

``Run`` owns: distributed setup, the output folder, preprocessing (rank 0, once, cached), data loaders whose
order is a function of the step, the optimiser and its warmup-cosine schedule, atomic checkpoints holding model,
optimiser, scheduler, RNG states and step (``--resume`` continues from ``checkpoints/last.pt``), and metrics
(``metrics.csv``; TensorBoard too when installed), all logged by rank 0. The loop itself is ``loop.train_stage``.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import InputError
from ..atomic import atomic_output
from ..models import build_model, config_dict, half_state, read_state_dict
from . import ddp
from .config import ModelSpec, RunConfig
from .data import packed_cases, preprocess, structures
from .dataset import CropDataset, StepBatchSampler, size_repeats, synth_config
from .interactive import InteractiveStep
from .loop import Stage, simulated_clicks, train_stage
from .pseudo import pseudo_source

PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


class Run:
    def __init__(self, cfg: RunConfig, out: str | Path, resume: bool, kind: str) -> None:
        self.cfg, self.kind = cfg, kind
        self.out = Path(out)
        self.rank, self.world, self.device = ddp.init_distributed()
        self.main = self.rank == 0
        if self.main:
            (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        ddp.barrier()
        last = self.out / "checkpoints" / "last.pt"
        if last.exists() and not resume:
            raise InputError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        self.resume_state = torch.load(last, map_location="cpu", weights_only=False) if resume and last.exists() else None
        if self.main:
            (self.out / "config.yaml").write_text(yaml.safe_dump({"command": kind, **cfg.as_dict()}, sort_keys=False))
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self._tb = None

    # ------------------------------------------------------------------ logging
    def log(self, message: str) -> None:
        if self.main:
            print(f"[{self.kind}] {message}", flush=True)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if not self.main:
            return
        # long format (step, time, metric, value): stages may log different metrics into the same file
        path = self.out / "metrics.csv"
        new = not path.exists()
        now = round(time.time(), 3)
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "time", "metric", "value"])
            writer.writerows([step, now, key, f"{float(value):.6g}"] for key, value in values.items())
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except Exception:  # tensorboard not installed: CSV only
                self._tb = False
        if self._tb:
            for key, value in values.items():
                self._tb.add_scalar(key, float(value), step)

    # ------------------------------------------------------------------ data
    def dataset(self, crop: int, fixed: bool = False) -> CropDataset:
        """Training crops of ``crop``^3; ``fixed``: the same crop of each structure every time, real images only
        (distillation's feature matching, whose teacher features are cached per crop)."""
        data = self.cfg.data
        if data.packed:
            folder, records = packed_cases(data.packed, data.holdout)
        elif not data.roots:
            raise InputError("no data: set data.roots in the config (nnU-Net v2 or Decathlon dataset folders)")
        else:
            cache = Path(data.cache or self.out / "cache")
            # rank 0 preprocesses into the cache; the others then read its index
            folder, records = ddp.on_main_then_all(
                lambda: preprocess(data.roots, cache, data.spacing, data.holdout, log=self.log))
        targets = structures(records, folder, data.labels, data.min_voxels)
        if not targets:
            raise InputError("no structure large enough to train on in the usable cases")
        self.log(f"{len(records)} case(s), {len(targets)} structure(s); cache {folder}")
        options = dataclasses.asdict(data)  # the synthetic and pseudo-mask sources read the section as a mapping
        synth = None if fixed else ddp.on_main_then_all(lambda: synth_config(options, records, folder, log=self.log))
        pseudo = None if fixed else ddp.on_main_then_all(lambda: pseudo_source(options, records, folder, log=self.log))
        return CropDataset(records, folder, targets, crop, self.cfg.seed, data.synthetic_fraction,
                           augment=not fixed, fixed=fixed, affine_prob=data.affine_prob, rotate_deg=data.rotate_deg,
                           scale=data.scale, anatomy_fraction=0.0 if fixed else data.anatomy_fraction,
                           procedural_fraction=0.0 if fixed else data.procedural_fraction, synth=synth,
                           pseudo_fraction=0.0 if fixed else data.pseudo_fraction, pseudo=pseudo)

    def batches(self, dataset: CropDataset, start_micro: int) -> Iterator[dict]:
        """Micro-batches from number ``start_micro`` on: their order is a function of the micro-batch number."""
        repeats = size_repeats(np.array([s.voxels for s in dataset.structures]), self.cfg.data.size_weighting)
        if repeats.sum() != len(repeats):
            self.log(f"size-aware sampling: {len(repeats)} structures, {int(repeats.sum())} samples an epoch")
        sampler = StepBatchSampler(len(dataset), self.cfg.train.batch_size, self.rank, self.world,
                                   self.cfg.seed, start=start_micro, repeats=repeats)
        workers = self.cfg.data.workers
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                             persistent_workers=workers > 0)
        return iter(loader)

    # ------------------------------------------------------------------ optimisation
    def optimiser(self, params: list[nn.Parameter], steps: int, lr: Optional[float] = None):
        t = self.cfg.train
        opt = torch.optim.AdamW(params, lr=lr or t.lr, weight_decay=t.weight_decay)
        warmup = max(t.warmup, 0)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(steps - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def wrap(self, module: nn.Module) -> nn.Module:
        module.to(self.device)
        if self.world > 1:
            return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda"
                                           else None)
        return module

    def autocast(self):
        if self.device.type == "cuda" and self.cfg.train.amp in ("auto", "bf16", True):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # ------------------------------------------------------------------ checkpoints
    def check_in_sync(self, module: nn.Module) -> list[str]:
        """Digest of the parameters on every rank (all ranks call this); diverged ranks are an error."""
        digests = ddp.gather_digests(module, self.device)
        if len(set(digests)) > 1:
            raise RuntimeError(f"ranks hold different parameters: {digests}")
        return digests

    def save(self, state: dict, name: str = "last.pt") -> None:
        if not self.main:
            return
        state = {**state, "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                  "python": random.getstate()}, "config": self.cfg.as_dict(), "command": self.kind}
        with atomic_output(self.out / "checkpoints" / name) as tmp:
            torch.save(state, tmp)

    def snapshot(self, model: nn.Module, step: int) -> None:
        """Weights alone at ``step`` (``snapshots/stepN.pt``, float16), for learning curves: last.pt is overwritten."""
        if not self.main:
            return
        (self.out / "snapshots").mkdir(exist_ok=True)
        spec = self.out / "snapshots" / "model.yaml"  # what the snapshots load into, as --model takes it
        if not spec.exists():
            spec.write_text(yaml.safe_dump({"model": model.name, **config_dict(model.config)}, sort_keys=False))
        state = half_state(model.state_dict())
        with atomic_output(self.out / "snapshots" / f"step{step}.pt") as tmp:
            torch.save({"model": state}, tmp)

    def restore(self, module: nn.Module, module_key: str, opt, sched, what: str) -> int:
        """Load module, optimiser, scheduler and RNG states from the checkpoint being resumed -> its step."""
        state = self.resume_state
        module.load_state_dict(state[module_key])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self.log(f"resuming {what} at step {state['step']}")
        return int(state["step"])

    def finish(self, model: nn.Module) -> Path:
        """Export the final model, say where, and wait for every rank."""
        path = self.export(model)
        self.log(f"done: {path}")
        ddp.barrier()
        return path

    def export(self, model: nn.Module) -> Path:
        """Final weights for ``segment``: ``model.pt`` (weights) + ``model.yaml`` (architecture)."""
        if self.main:
            with atomic_output(self.out / "model.pt") as tmp:
                torch.save({"model": model.state_dict()}, tmp)
            (self.out / "model.yaml").write_text(yaml.safe_dump({"model": model.name, **config_dict(model.config)},
                                                                sort_keys=False))
        return self.out / "model.pt"


def build_from(spec: Union[ModelSpec, dict], device: torch.device, fresh: list[str] = ()):
    """A ``ModelSpec`` (or the same as a mapping) -> model. Submodules named in ``fresh`` (``train.reinit``) may
    be missing from the checkpoint, so a run can add a part (a new head) to trained weights; every other key must
    be there."""
    spec = ModelSpec(**spec) if isinstance(spec, dict) else spec
    if spec.checkpoint is None or not fresh:
        return build_model(spec.name, checkpoint=spec.checkpoint, device=device, **spec.config)
    prefixes = tuple(f"{name}." for name in fresh)
    state = {k: v for k, v in read_state_dict(spec.checkpoint).items() if not k.startswith(prefixes)}
    model = build_model(spec.name, checkpoint=state, strict=False, device=device, **spec.config)
    expected = model.state_dict()
    skipped = set(model.skipped_checkpoint_keys(state))  # parts this model does not build (build_model skips them)
    missing = [k for k in expected if k not in state and not k.startswith(prefixes)]
    unexpected = [k for k in state if k not in expected and k not in skipped]
    if missing or unexpected:  # strict, except for the fresh parts
        raise InputError(f"checkpoint does not fit {model.name}: {len(missing)} missing key(s) "
                         f"{', '.join(missing[:3])}; {len(unexpected)} unexpected key(s) {', '.join(unexpected[:3])}")
    return model


def _submodule(model: nn.Module, name: str, option: str) -> nn.Module:
    """``model``'s submodule at dotted path ``name``; an InputError naming ``option`` if there is none."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise InputError(f"{option}: {model.name} has no submodule {name!r}") from None


def reinitialise(model: nn.Module, names: list[str]) -> None:
    """Give the named submodules (dotted paths, e.g. ``mask_decoder.iou_prediction_head``) fresh weights.

    For a part a run has broken beyond what gradients can repair (an IoU head whose ReLU units have all died)."""
    for name in names:
        module = _submodule(model, name, "train.reinit")
        resettable = [m for m in module.modules() if hasattr(m, "reset_parameters")]
        if not resettable:
            raise InputError(f"train.reinit: {name!r} has no parameters to reset")
        for m in reversed(resettable):  # children first, so a module's own reset (a zero read-out) has the last word
            m.reset_parameters()


def set_trainable(model: nn.Module, frozen: list[str], only: list[str] = ()) -> list[nn.Parameter]:
    """Freeze whole ``frozen`` parts; with ``only`` (dotted submodule names, ``train.only``), train those alone.

    ``only`` is for a part added to trained weights (``train.reinit``) that should learn without the rest of the
    model moving: on a few training cases, continuing the whole model trades one set of structures for another."""
    unknown = set(frozen) - set(PARTS)
    if unknown:
        raise InputError(f"train.freeze takes {', '.join(PARTS)}; got {', '.join(sorted(unknown))}")
    for part in PARTS:
        for p in getattr(model, part).parameters():
            p.requires_grad_(part not in frozen and not only)
    for name in only:
        for p in _submodule(model, name, "train.only").parameters():
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def interactive_stage(run: Run, model: nn.Module, first: int, last: int, label: str = "",
                      tag: Optional[int] = None) -> Stage:
    """Steps ``first`` .. ``last`` of the interactive loop on ``model`` (train/finetune, and distillation's stage 2),
    as ``train.*`` configures it."""
    t = run.cfg.train
    step = InteractiveStep(model, t.clicks, t.box_prob, t.loss_downsample, t.central_click_prob, t.iou_rank_weight,
                           loss_clicks=t.loss_clicks, follow=t.follow)
    return Stage(simulated_clicks, step, model, run.dataset(model.config.img_size), first, last, label=label,
                 tag=tag, accum=max(t.grad_accum, 1), averaged=("rank_acc",), snapshot_every=t.snapshot_every,
                 max_minutes=t.max_minutes)


def run_interactive(cfg: RunConfig, out: str | Path, resume: bool = False, kind: str = "train") -> Path:
    """``medsam3d train`` / ``finetune``: the SAM-style interactive loop on a cohort."""
    if kind == "finetune" and not cfg.model.checkpoint:
        raise InputError("finetune needs model.checkpoint (the weights to start from); use train to start fresh")
    run = Run(cfg, out, resume, kind)
    try:
        t = cfg.train
        model = build_from(cfg.model, run.device, t.reinit)
        model.train()
        reinitialise(model, t.reinit)  # before restore: a resumed run gets its own weights back
        opt, sched = run.optimiser(set_trainable(model, t.freeze, t.only), t.steps)
        start = run.restore(model, "model", opt, sched, kind) if run.resume_state else 0
        train_stage(run, interactive_stage(run, model, 0, t.steps), opt, sched, start)
        return run.finish(model)
    finally:
        ddp.cleanup()
