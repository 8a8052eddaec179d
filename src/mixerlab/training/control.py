"""How a run is stopped and quietened from outside the loop: signals that stop it after the current
step (with a checkpoint), and the log level of processes that should not talk."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Any

log = logging.getLogger("mixerlab.training.loop")


class StopFlag:
    """SIGINT/SIGTERM set a flag, as does a step budget (tests stop runs that way); the loop checks it
    after each step and checkpoints before leaving."""

    def __init__(self, after_steps: int | None = None) -> None:
        self.set = False
        self.after_steps, self.steps = after_steps, 0
        self._old: dict[int, Any] = {}

    def step_done(self) -> bool:
        self.steps += 1
        return self.set or (self.after_steps is not None and self.steps >= self.after_steps)

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.set:  # a second signal: leave now
            raise KeyboardInterrupt
        self.set = True
        if os.environ.get("RANK", "0") == "0":  # every process gets the terminal's Ctrl-C; one says so
            log.warning("signal %d: stopping after this step and saving a checkpoint", signum)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def quiet_logs(quiet: bool):
    """Only warnings from mixerlab while `quiet`; the level is restored afterwards."""
    logger = logging.getLogger("mixerlab")
    old = logger.level
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)
