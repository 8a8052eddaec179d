"""Keep freed memory in the process instead of handing it back to the kernel (glibc malloc on Linux).

By default glibc serves every allocation above a threshold (128 KiB, adapting up to 32 MiB) with a
fresh `mmap`, returns it with `munmap` on free, and trims free memory above 128 KiB off the heap top.
A training step allocates and frees the same multi-megabyte activations hundreds of times, so every
step pays page faults to zero the same pages again (docs/benchmarks.md measures the cost).
Raising both thresholds lets malloc reuse them, which is what tcmalloc and jemalloc do and why
PyTorch's CPU tuning guides preload them; this gets the same effect without a preload. The price: the
process keeps its peak memory until it exits.

`tune_cpu_allocator()` is called by `perf.runtime.pick_device` for a CPU (so by every task) and by
`optimize_for_inference`; set MIXERLAB_MALLOC=default
to leave malloc alone. It is a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # 1 GiB: larger blocks still go to mmap, smaller ones are reused from the heap
_done: bool | None = None


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process. Returns whether malloc is tuned."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("MIXERLAB_MALLOC", "").lower() == "default":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    ok = _set_thresholds(_THRESHOLD)
    if not ok:
        log.debug("mallopt refused the thresholds; malloc left at its defaults")
    _done = ok
    return ok


_DEFAULT_THRESHOLD = 128 * 1024  # glibc's own starting value for both


def untune_in_worker(_worker_id: int = 0) -> None:
    """A DataLoader `worker_init_fn`: give a forked decoding worker glibc's default thresholds again.
    A worker inherits the parent's tuning, and with it its heap would keep every decoded image and
    collated batch it ever held (docs/benchmarks.md, embed memory); it gains nothing from the tuning,
    since its allocations are not the repeated activations the tuning is for."""
    if _done:
        _set_thresholds(_DEFAULT_THRESHOLD)


def _set_thresholds(value: int) -> bool:
    """glibc's mmap and trim thresholds both set to `value`; whether mallopt took them."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.mallopt(_M_MMAP_THRESHOLD, value) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, value) == 1
    except (OSError, AttributeError):
        return False


def allocator_tuned() -> bool:
    """Whether `tune_cpu_allocator` has taken effect in this process (benchmarks record it)."""
    return bool(_done)
