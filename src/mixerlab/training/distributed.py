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


def _reduced(value: float, device: torch.device, op: str) -> float:
    """`value` all-reduced over the ranks with `op` ("SUM", "MAX"); the value itself without DDP (where
    torch.distributed may be absent altogether, so the op is looked up only when it is not)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t.item()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any: all ranks stop at the same step."""
    return bool(max_across(1.0 if flag else 0.0, device))


def mean_across(value: float, device: torch.device) -> float:
    return _reduced(value, device, "SUM") / (dist.get_world_size() if active() else 1)


def max_across(value: float, device: torch.device) -> float:
    return _reduced(value, device, "MAX")


def gather_objects(obj):
    """Every rank's `obj`, in rank order (a one-element list without DDP)."""
    if not active():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
