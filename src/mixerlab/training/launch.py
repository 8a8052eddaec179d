"""`mixerlab train --processes N`: N training processes on this machine without torchrun.

The same environment torchrun gives its workers (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT), so
the trainer runs exactly as under torchrun. What differs is the stop: Ctrl-C reaches this parent, which
passes it to every worker once; each saves and leaves, and the parent says in one line how to
continue instead of torchrun's traceback of its own SignalException.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

STOPPED = 130  # the trainer's exit status when a signal stopped it (a checkpoint was written)
LAUNCHED = "MIXERLAB_PROCESSES"  # set in the workers: the command to resume with names --processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, argv: list[str]) -> int:
    """Run `mixerlab <argv>` in `processes` workers; the exit status is the workers' worst (0 when all
    finished, 130 when a signal stopped them and they saved). Each worker gets its share of the cores
    (OMP_NUM_THREADS, unless set; `--threads` in `argv` wins)."""
    from ..perf.threads import usable_cores

    env = {**os.environ, "WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), LAUNCHED: str(processes)}
    env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // processes)))
    # The workers run in a session of their own, so that a Ctrl-C reaches them once, from here: in the
    # terminal's process group they would get it twice (the terminal's and ours), and a second signal
    # means "leave now" to the trainer.
    workers = [subprocess.Popen([sys.executable, "-m", "mixerlab", *argv], start_new_session=True,
                                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(processes)]

    def forward(signum, frame):
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        codes = _wait(workers)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    failed = [(r, c) for r, c in enumerate(codes) if c not in (0, STOPPED)]
    if failed:
        print(f"mixerlab train: process {failed[0][0]} of {processes} exited with status {failed[0][1]}; "
              "its error is above", file=sys.stderr)
        return 1
    return STOPPED if STOPPED in codes else 0


def _wait(workers: list[subprocess.Popen]) -> list[int]:
    """Every worker's exit status. When one fails, the others are stopped: they would wait for it at
    the next collective forever."""
    while any(w.poll() is None for w in workers):
        bad = [w for w in workers if w.poll() not in (None, 0, STOPPED)]
        if bad:
            for w in workers:
                if w.poll() is None:
                    w.terminate()
            deadline = time.monotonic() + 30
            for w in workers:
                try:
                    w.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    w.kill()
            break
        time.sleep(0.2)
    return [w.wait() for w in workers]
