"""Where and in which precision a job runs: the device, the precision that `auto` means on it, and
the autocast context for that precision. Every task (train, eval, predict, bench) starts here."""

from __future__ import annotations

import contextlib

import torch

from .allocator import tune_cpu_allocator

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
    """'auto': bf16 where the hardware computes it natively (faster than fp32 for these models on an
    AVX512-BF16 CPU, docs/benchmarks.md), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if native_bf16(device) else "fp32"


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
