"""Timing that measures the same way everywhere: the median of repeated timed loops after warm-up,
synchronised on CUDA, and the machine recorded beside the numbers."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .allocator import allocator_tuned


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "malloc_tuned": allocator_tuned()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 2, iters: int = 3, repeats: int = 3,
              min_time: float = 0.0) -> float:
    """Median seconds per call over `repeats` timed loops of `iters` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = 0
        while n < iters or time.perf_counter() - t < min_time:
            fn()
            n += 1
        _sync(device)
        times.append((time.perf_counter() - t) / n)
    return statistics.median(times)
