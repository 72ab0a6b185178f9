"""torch.distributed helpers: every command runs unchanged alone or under torchrun (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn


def init_distributed() -> tuple[int, int, torch.device]:
    """-> (rank, world size, device). Joins the process group when started by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def mean_across_ranks(value: float, device: torch.device) -> float:
    return means_across_ranks([value], device)[0]


def means_across_ranks(values: Sequence[float], device: torch.device) -> list[float]:
    """Each value's mean over the ranks (one all-reduce; every rank passes as many values, in the same order)."""
    if not is_distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], device=device)
    dist.all_reduce(t)
    return [float(v) / dist.get_world_size() for v in t]


def with_every_parameter(loss: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``loss`` + 0 x every trainable parameter of ``module``.

    Each parameter then gets a gradient, zero where the step did not use it (box embeddings without a box, a layer
    the distillation schedule has not reached yet), so DDP reduces every bucket without find_unused_parameters, and
    the optimiser updates every parameter alike (AdamW's weight decay included), alone or under DDP."""
    return loss + 0.0 * sum(p.sum() for p in module.parameters() if p.requires_grad)


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def on_main_then_all(fn):
    """Run ``fn`` on rank 0 first (e.g. preprocessing into a shared cache), then on the others; an error on rank 0
    is raised on every rank instead of leaving the others waiting at a barrier."""
    from ..errors import InputError

    if not is_distributed():
        return fn()
    error = [None]
    result = None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except InputError as exc:
            error[0] = str(exc)
    dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise InputError(error[0])
    return result if dist.get_rank() == 0 else fn()


def gather_digests(module: torch.nn.Module, device: torch.device) -> list[str]:
    """sha256 of the module's parameters on every rank (a list of one when not distributed)."""
    import hashlib

    digest = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    mine = digest.hexdigest()
    if not is_distributed():
        return [mine]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out
