"""Where and in which precision a job runs: the device, the precision that `auto` means on it, and
the autocast context for that precision. Every task (train, eval, predict, bench) starts here."""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

from . import gemm
from .allocator import tune_cpu_allocator

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
log = logging.getLogger(__name__)


def pick_device(name: str = "auto", keep_freed: bool = True) -> torch.device:
    """'auto': the GPU when CUDA is available, else the CPU; any other name as torch spells it. On a
    CPU, glibc malloc is tuned to keep freed pages (allocator.py) before the first large allocation,
    unless `keep_freed` is False: a single pass over a dataset of any size (embed) gains little from
    it and would keep its heap at its highest."""
    device = torch.device(name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and keep_freed:
        tune_cpu_allocator()
    return device


def pick_precision(precision: str, device: torch.device) -> str:
    """'auto': on a CUDA GPU bf16 (fp16 where it has no bf16); on a CPU bf16 where it computes bf16 natively
    and faster than fp32 (measured: `bf16_pays_on_cpu`), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if native_bf16(device) and bf16_pays_on_cpu() else "fp32"


# bf16 must win by this much to be picked: near a tie, fp32's precision is worth more than the time
BF16_MARGIN = 1.15
PROBE_SHAPE = (1024, 768, 1024)  # m x k x n: about the size of these models' products


@functools.cache
def bf16_pays_on_cpu() -> bool:
    """Whether this CPU runs bf16 products faster than fp32 ones: measured once a process, in about a
    fifth of a second (`gemm.mm_seconds`), because AVX512-BF16 alone does not say. On AMX tiles and on AMD's AVX512-BF16
    they are much faster; on an Intel Xeon that has AVX512-BF16 but no AMX they ran at half the fp32
    rate, and training in bf16 there was slower than in fp32 (docs/benchmarks.md)."""
    cpu = torch.device("cpu")
    fp32, bf16 = (gemm.mm_seconds(*PROBE_SHAPE, dtype, cpu) for dtype in (torch.float32, torch.bfloat16))
    pays = fp32 / bf16 >= BF16_MARGIN
    if not pays:
        log.info("precision auto: fp32, since this CPU runs bf16 products no faster (%.1f ms against %.1f ms "
                 "in fp32; --precision bf16 forces it)", 1000 * bf16, 1000 * fp32)
    return pays


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware (a CUDA GPU that supports it; a CPU with AVX512-BF16
    or AMX). Elsewhere torch emulates it, many times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for 'bf16' and 'fp16'; nothing for 'fp32'."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()
