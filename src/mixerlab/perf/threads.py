"""How many threads a job should use, and a word when the machine is busy.

torch starts with one thread per core of the host, which is wrong twice over in a container or a
shared machine: the process may be allowed fewer cores (CPU affinity, a cgroup CPU quota), and other
jobs may be running on them. An OpenMP team of N threads on fewer than N free cores waits at every
barrier for threads that are not running, so a step can take twenty times its time. `usable_cores`
counts what this process may use; `configure` sets torch to it (or to `--threads` / OMP_NUM_THREADS,
which win); `busy_warning` says so when the load average is above the cores."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _cgroup_quota() -> float | None:
    """CPUs the cgroup allows (cpu.max in v2, cfs quota / period in v1), None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def configure(threads: int | None = None) -> int:
    """Set torch's intra-op threads: `threads` if given, else OMP_NUM_THREADS if set, else the usable
    cores. Returns the count."""
    import torch

    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"])
    n = threads or usable_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def load_phrase(load: float | None, cores: int) -> str:
    """"load average 1.2 on 2 core(s)", as benchmarks record the load they ran under."""
    return f"load average {'unknown' if load is None else f'{load:.1f}'} on {cores} core(s)"


def busy_warning(threads: int) -> str | None:
    """A warning when other work is running on this process's cores, else None."""
    load, cores = load_average(), usable_cores()
    if load is None or load <= cores + 0.5:
        return None
    return (f"the machine is busy: load average {load:.1f} on {cores} usable core(s), and this job runs "
            f"{threads} thread(s). Timings will be off and a step may take many times its time; with other jobs "
            f"on these cores, use fewer threads (--threads 1, or OMP_NUM_THREADS=1) or wait for them")


class StepWatch:
    """Warns once when a training step takes several times the median of the first steps: the sign of
    threads waiting for cores that other processes took."""

    def __init__(self, first: int = 5, factor: float = 4.0):
        self.first, self.factor, self.times, self.warned = first, factor, [], False

    def observe(self, seconds: float, threads: int) -> str | None:
        self.times.append(seconds)
        if self.warned or len(self.times) <= self.first:
            return None
        base = sorted(self.times[: self.first])[self.first // 2]
        recent = sorted(self.times[-3:])[1] if len(self.times) >= 3 else seconds
        if recent > self.factor * base:
            self.warned = True
            load = load_average()
            return (f"training steps now take {recent / base:.1f}x their first measurement ({1000 * recent:.0f} ms "
                    f"against {1000 * base:.0f} ms)" + (f"; load average {load:.1f} on {usable_cores()} core(s)"
                                                       if load is not None else "")
                    + f". Likely other jobs on these cores: this run uses {threads} thread(s); --threads 1 or "
                      f"OMP_NUM_THREADS=1 usually recovers the speed on a shared machine")
        return None
