"""PyTorch's own distributed engine, as `torchrun` sets it up: gloo on CPU, nccl on CUDA.

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op, so the trainer
has one code path for one process and for many.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..perf.runtime import pick_device


@dataclass
class DistContext:
    rank: int
    world_size: int
    device: torch.device
    initialised_here: bool = False


def setup(device: str = "auto") -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    initialised_here = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        initialised_here = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank, world, dev, initialised_here)


def cleanup(ctx: DistContext, synchronise: bool = True) -> None:
    """Destroy the process group this process created. Left to the interpreter's exit, gloo's threads
    can outlive the objects they point at and the process aborts ("terminate called without an active
    exception") after a good run. `synchronise=False` (this rank failed) skips the barrier, which the
    other ranks would never reach."""
    if not (ctx.initialised_here and dist.is_initialized()):
        return
    gc.collect()  # the DDP wrapper and its reducer sit in reference cycles that hold the group
    if synchronise:
        dist.barrier()
    dist.destroy_process_group()


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any: all ranks stop at the same step."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_across(value: float, device: torch.device) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def max_across(value: float, device: torch.device) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def gather_objects(obj):
    """Every rank's `obj`, in rank order (a one-element list without DDP)."""
    if not active():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
