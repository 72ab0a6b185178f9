"""The training loop every stage runs: ``train``/``finetune``, and distillation's feature matching (stage 1),
decoder fine-tuning (stage 2) and holistic distillation.

A stage hands the loop a step function, ``step(module, batch, step, seed) -> (loss, metrics)``: one micro-batch's
forward through ``module`` (the trained module, wrapped for DDP by the loop), the loss a tensor and the metrics
floats. The loop does the rest, the same way for every stage: data order as a function of the step (so a resumed
run draws what the killed one would have), gradient accumulation, the DDP unused-parameter workaround, optimiser
and schedule steps, metrics (``metrics.csv``) and log lines, checkpoints, snapshots and the wall-clock budget.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Union

import numpy as np
import torch
from torch import nn

from . import ddp

if TYPE_CHECKING:
    from .dataset import CropDataset
    from .trainer import Run

# (module, batch on the run's device, the run's step, seed) -> (loss, metrics)
StepFunction = Callable[[nn.Module, dict, int, int], tuple[torch.Tensor, dict[str, float]]]


def simulated_clicks(module: nn.Module, batch: dict, step: int, seed: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Step function of the modules that simulate clicks on a batch (InteractiveStep, HolisticDistillationStep):
    ``module(images, targets, seed)``, images and targets (B, 1, S, S, S)."""
    return module(batch["image"], batch["target"], seed)


@dataclass
class Stage:
    """One stage of a run, as the loop runs it."""

    step: StepFunction
    module: nn.Module  # what trains: wrapped for DDP; every trainable parameter gets a gradient each step
    model: nn.Module  # the model it trains: checkpointed as "model", snapshotted, exported at the end
    dataset: CropDataset
    first: int  # the run's step at which this stage begins (its data order counts from here)
    last: int  # the run's step at which it ends
    label: str = ""  # starts its log lines ("stage 1 step 3/6 ...")
    tag: Union[int, str, None] = None  # checkpoints' "stage": what a resumed distillation continues with
    # checkpoint ``module`` too, as "distiller" (it holds parameters ``model`` lacks: projections); the ranks' digest
    # is then of ``module``, else of ``model``
    save_module: bool = False
    accum: int = 1  # micro-batches per optimiser step
    averaged: tuple[str, ...] = ()  # metrics averaged over every finite value since the last log line
    snapshot_every: int = 0  # >0: also keep the weights alone every this many steps
    max_minutes: float = 0.0  # >0: stop (checkpointed) once this much wall-clock time has passed


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """The seed of one micro-batch's step function: the same on a resumed run, different on every rank."""
    return int(np.random.default_rng([seed, step, micro, rank]).integers(2**31 - 1))


def train_stage(run: Run, stage: Stage, opt: torch.optim.Optimizer, sched, start: int) -> int:
    """Steps ``start`` .. ``stage.last`` of ``stage`` -> the step it stopped after (``stage.last``, or earlier when
    ``stage.max_minutes`` ran out)."""
    t = run.cfg.train
    wrapped = run.wrap(stage.module)
    batches = run.batches(stage.dataset, (start - stage.first) * stage.accum)
    metrics = MetricLog(stage.averaged, run.device)
    began, done = time.monotonic(), start
    for step in range(start, stage.last):
        t0 = time.perf_counter()
        losses, values = _forward_backward(run, stage, wrapped, batches, step)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        metrics.add(losses, values)
        done = step + 1
        if done % t.log_every == 0 or step == start:
            _log(run, stage, done, metrics.summary(sched.get_last_lr()[0], time.perf_counter() - t0))
        saved = done % t.checkpoint_every == 0 or done == stage.last
        if saved:
            _checkpoint(run, stage, opt, sched, done)
        if stage.snapshot_every and done % stage.snapshot_every == 0:
            run.snapshot(stage.model, done)
        if done < stage.last and _out_of_time(run, stage, began):
            if not saved:
                _checkpoint(run, stage, opt, sched, done)
            run.log(f"stopping at step {done}: train.max_minutes ({stage.max_minutes}) has passed")
            break
    return done


def _forward_backward(run: Run, stage: Stage, wrapped: nn.Module, batches: Iterator[dict],
                      step: int) -> tuple[list[float], list[dict[str, float]]]:
    """``stage.accum`` micro-batches' forward and backward (gradients averaged) -> their losses and metrics."""
    losses, values = [], []
    for micro in range(stage.accum):
        batch = {k: v.to(run.device) if isinstance(v, torch.Tensor) else v for k, v in next(batches).items()}
        # DDP reduces gradients at the last micro-batch only
        sync = wrapped.no_sync() if (run.world > 1 and micro < stage.accum - 1) else nullcontext()
        with sync, run.autocast():
            loss, metrics = stage.step(wrapped, batch, step, step_seed(run.cfg.seed, step, micro, run.rank))
            loss = ddp.with_every_parameter(loss, stage.module)
        (loss / stage.accum).backward()
        losses.append(float(loss.detach()))
        values.append(metrics)
    return losses, values


def _out_of_time(run: Run, stage: Stage, began: float) -> bool:
    """Has ``stage.max_minutes`` passed? Every rank stops at the same step: the slowest one's clock decides."""
    if not stage.max_minutes:
        return False
    late = float(time.monotonic() - began > stage.max_minutes * 60.0)
    return ddp.mean_across_ranks(late, run.device) > 0


def _log(run: Run, stage: Stage, step: int, values: dict[str, float]) -> None:
    run.metrics(step, values)
    shown = "".join(f" {k} {v:.4g}" for k, v in values.items() if k not in ("loss", "lr", "seconds", "stage"))
    run.log(f"{stage.label + ' ' if stage.label else ''}step {step}/{stage.last} loss {values['loss']:.4f}{shown}")


def _checkpoint(run: Run, stage: Stage, opt: torch.optim.Optimizer, sched, step: int) -> None:
    """Everything a resumed run needs (all ranks call this: the digests are gathered from each)."""
    state = {"model": stage.model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "step": step, "rank_digests": run.check_in_sync(stage.module if stage.save_module else stage.model)}
    if stage.save_module:
        state["distiller"] = stage.module.state_dict()
    if stage.tag is not None:
        state["stage"] = stage.tag
    run.save(state)


class MetricLog:
    """Each step's losses and metrics (one per micro-batch) -> what a log line reports.

    The loss and most metrics: their mean over the micro-batches and ranks of the logged step. Metrics named in
    ``averaged`` (measured on some samples only, nan on the others): their mean over every finite value since the
    last log line, left out while there is none. Every rank must report the same metric names at a step."""

    def __init__(self, averaged: tuple[str, ...], device: torch.device) -> None:
        self.averaged, self.device = averaged, device
        self.sums = {key: 0.0 for key in averaged}
        self.counts = {key: 0.0 for key in averaged}
        self.last: dict[str, float] = {}

    def add(self, losses: list[float], metrics: list[dict[str, float]]) -> None:
        names = [k for k in dict.fromkeys(k for m in metrics for k in m) if k not in self.averaged]
        means = [float(np.mean(losses))] + [float(np.mean([m[k] for m in metrics if k in m])) for k in names]
        sums, counts = [], []
        for key in self.averaged:
            found = np.asarray([m.get(key, np.nan) for m in metrics], dtype=float)
            finite = np.isfinite(found)
            sums.append(float(np.sum(found[finite])))
            counts.append(float(finite.sum()))
        reduced = ddp.means_across_ranks(means + sums + counts, self.device)
        self.last = dict(zip(["loss", *names], reduced[: len(means)]))
        for i, key in enumerate(self.averaged):
            self.sums[key] += reduced[len(means) + i]
            self.counts[key] += reduced[len(means) + len(sums) + i]

    def summary(self, lr: float, seconds: float) -> dict[str, float]:
        """The last step's values, then lr and its duration, then the interval's averages (which start again)."""
        values = {**self.last, "lr": lr, "seconds": seconds}
        for key in self.averaged:
            if self.counts[key] > 0:
                values[key] = self.sums[key] / self.counts[key]
            self.sums[key] = self.counts[key] = 0.0
        return values


__all__ = ["Stage", "StepFunction", "MetricLog", "simulated_clicks", "step_seed", "train_stage"]
