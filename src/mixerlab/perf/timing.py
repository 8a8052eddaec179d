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
    """The CPU (its name, family and model, which tell Zen 3/4/5 apart where the name says only 'AMD
    EPYC'; whether it has AVX-512, AVX512-BF16 and AMX), cores, threads and the load it ran under."""
    cpu = platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "cpu family", "model", "flags") and key.strip() not in fields:
                fields[key.strip()] = value.strip()
            if not line.strip() and fields:
                break
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    flags = set(fields.get("flags", "").split())
    from .threads import load_average, usable_cores

    info = {"cpu": cpu, "cpu_family": fields.get("cpu family"), "cpu_model": fields.get("model"),
            "isa": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags],
            "cores": os.cpu_count(), "usable_cores": usable_cores(), "threads": torch.get_num_threads(),
            "load_average": load_average(), "torch": torch.__version__,
            "python": platform.python_version(), "malloc_tuned": allocator_tuned()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


UNSTEADY = 2.0  # the slowest repeat over the fastest beyond which a time is not to be trusted


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 2, iters: int = 3, repeats: int = 3,
              min_time: float = 0.0) -> float:
    """Median seconds per call over `repeats` timed loops of `iters` calls, after `warmup` calls."""
    return time_call_spread(fn, device, warmup, iters, repeats, min_time)[0]


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, rounds: int = 3,
                     warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of one call of each function, `rounds` times, in turns (a, b, c, a, b, c, ...): a burst
    of load from other jobs then slows every one of them, not only whichever ran at that moment, so a
    ratio between them stays honest."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t)
    return times


def spread(samples: list[float]) -> float:
    """The slowest sample over the fastest: 1 on a quiet machine."""
    return max(samples) / max(min(samples), 1e-12)


def time_call_spread(fn: Callable[[], Any], device: torch.device, warmup: int = 2, iters: int = 3,
                     repeats: int = 3, min_time: float = 0.0) -> tuple[float, float]:
    """(median seconds per call, spread of the repeats): see `time_call`."""
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
    return statistics.median(times), spread(times)
