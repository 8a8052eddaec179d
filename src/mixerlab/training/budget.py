"""A run fitted to a time budget (`--time-budget SECONDS`): as many optimiser steps as fit in that many
seconds of training on this machine, with the schedule over exactly those steps.

The step time is measured before the run on its own model, optimiser and images (a few steps, then
both put back as they were), so the schedule knows its length from the first step and the run stays
a function of its config: the steps found are written into it (`max_steps`, `epochs`), and a resumed
run, or the same config on another machine, trains exactly those steps again. The measuring, and
setup such as the whitened stem, count against the budget; evaluation does not, as in the speedrun
benchmarks (airbench's rule)."""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time

import torch

from . import distributed as dist_utils
from .feed import make_feed
from .setup import build_optimizer
from .step import step_seed, train_step

WARM_STEPS = 2  # first steps pay allocation (and a compile): not timed
TIMED_STEPS = 8
log = logging.getLogger(__name__)


def measure_step(run) -> tuple[float, float, float, int]:
    """(seconds a training step takes, seconds an epoch's start and end add, seconds the measuring took
    in all, the steps timed); the model, optimiser and loss scaler are left as they were before it. An epoch's own
    cost is what its first batch waits for beyond the others' wait, and closing its reader (a
    stream's workers start and stop every epoch; images in memory cost next to nothing). Every
    process measures; they agree on the slowest, since a DDP step waits for it."""
    t_all = time.perf_counter()
    model_state = copy.deepcopy(run.model.state_dict())
    scaler_state = run.scaler.state_dict() if run.scaler is not None else None
    feed = make_feed(run)
    steps = feed.steps(0, 0)
    # past the batches a stream's workers made ahead: the steps after them share the cores with the decoding
    warm = WARM_STEPS + feed.prefetched
    n = min(warm + TIMED_STEPS, run.steps_per_epoch)
    times, waits = [], []
    try:
        run.ddp.train()
        for i in range(n):
            torch.manual_seed(step_seed(run.cfg.seed, 0, i, run.ctx.rank))
            t = time.perf_counter()
            batches, _ = next(steps)
            waits.append(time.perf_counter() - t)
            train_step(run.ddp, batches, run.optimizer, run.cfg, run.data.num_classes, run.device,
                       run.precision, run.scaler)
            if i >= min(warm, n - 1):
                times.append(time.perf_counter() - t)
    finally:
        t = time.perf_counter()
        steps.close()
        closing = time.perf_counter() - t
    run.model.load_state_dict(model_state)
    # a new optimiser, as the run's was before any step (a sharded one has no whole state to copy back)
    run.optimizer = build_optimizer(run.cfg, run.model)
    if scaler_state is not None:
        run.scaler.load_state_dict(scaler_state)
    # medians: one step slowed by a first use or a neighbour's burst says little of the thousand after it
    per_step = dist_utils.max_across(statistics.median(times), run.device)
    per_epoch = dist_utils.max_across(max(0.0, waits[0] - statistics.median(waits[-len(times):])) + closing,
                                      run.device)
    return per_step, per_epoch, time.perf_counter() - t_all, len(times)


def steps_that_fit(seconds: float, per_step: float, per_epoch: float, steps_per_epoch: int) -> int:
    """The most steps whose time, with each epoch's own cost paid when it starts, stays within `seconds`."""
    epoch = steps_per_epoch * per_step + per_epoch
    whole = max(0, math.floor(seconds / epoch))
    rest = seconds - whole * epoch - per_epoch  # what a last, partial epoch has for its steps
    return whole * steps_per_epoch + (min(steps_per_epoch, math.floor(rest / per_step)) if rest > 0 else 0)


def fit(run, budget: float, spent: float, max_epochs: int) -> tuple[int, float, str]:
    """(steps that fit in `budget` seconds of which `spent` are gone, at most `max_epochs` epochs; the
    seconds the measuring took, which are spent too; the line that says how the steps were found)."""
    per_step, per_epoch, measuring, timed = measure_step(run)
    left = budget - spent - measuring
    spe = run.steps_per_epoch
    steps = max(1, min(steps_that_fit(left, per_step, per_epoch, spe), max_epochs * spe))
    epoch_cost = f" and an epoch's start {per_epoch:.2f} s" if per_epoch >= 0.01 else ""
    why = (f"time budget {budget:g} s: a step takes {1000 * per_step:.0f} ms here{epoch_cost} (measured on "
           f"{timed} steps in {measuring:.1f} s{f', after {spent:.1f} s of setup' if spent >= 0.05 else ''}), "
           f"so {steps:,} steps fit: {steps / spe:.2f} epochs")
    if left < per_step + per_epoch:
        why += f" (the budget is gone before the first step: {left:.1f} s are left)"
    elif steps == max_epochs * spe:
        why += f" (the most --epochs allows: {max_epochs})"
    return steps, measuring, why
