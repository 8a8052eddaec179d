"""What the options left to `auto` (None) become once the data is known, and the line that says so.

The default recipe (`auto`) leaves three choices to the data (the measurements behind them are in
docs/results.md):
- the length: a budget of optimiser steps, so a small folder trains for many epochs and a large set
  for few, with a floor of MIN_EPOCHS epochs;
- the warmup: a share of those steps;
- mirror flips: on for the built-in sets known to keep their class in a mirror (Fashion-MNIST,
  CIFAR), off for everything else, since a mirrored digit, letter, arrow or X-ray can be another
  class, and off in a run of under two epochs, where a model that sees each image about once learns
  more from the images as they are. `--flip` turns them on for a folder.
The values are written into the run's config, so a resumed run keeps them.
"""

from __future__ import annotations

import dataclasses
import math

from ..data.datasets import Dataset
from .config import TrainConfig

STEP_BUDGET = 2000
MIN_EPOCHS = 5
MAX_EPOCHS = 300
WARMUP_SHARE = 0.05


def total_steps(epochs: int, max_steps: int | None, steps_per_epoch: int) -> int:
    """The optimiser steps of a run: its epochs', or fewer where --max-steps (or a time budget) ends it
    inside its last epoch."""
    return min(epochs * steps_per_epoch, max_steps) if max_steps else epochs * steps_per_epoch


def fill_from_data(cfg: TrainConfig, data: Dataset, steps_per_epoch: int) -> TrainConfig:
    """`cfg` with epochs, warmup_epochs and flip chosen for `data` where they are None."""
    epochs = cfg.epochs
    if epochs is None:
        epochs = min(max(math.ceil(STEP_BUDGET / steps_per_epoch), MIN_EPOCHS), MAX_EPOCHS)
    length = total_steps(epochs, cfg.max_steps, steps_per_epoch) / steps_per_epoch  # in epochs
    warmup = cfg.warmup_epochs if cfg.warmup_epochs is not None else WARMUP_SHARE * length
    flip = cfg.flip if cfg.flip is not None else data.mirror_invariant is True and length >= 2
    return dataclasses.replace(cfg, epochs=epochs, warmup_epochs=warmup, flip=flip)


def describe(given: TrainConfig, cfg: TrainConfig, data: Dataset, steps_per_epoch: int) -> str:
    """The run's first log line: length, warmup and augmentation, and why where the data chose."""
    total = total_steps(cfg.epochs, cfg.max_steps, steps_per_epoch)
    cut = ", the last epoch cut short" if total < cfg.epochs * steps_per_epoch else ""
    parts = [f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} of {steps_per_epoch} steps ({total:,} steps{cut}"
             + (f", the budget for {len(data.train):,} training images)"
                if given.epochs is None and not given.time_budget else ")"),
             f"warmup {round(cfg.warmup_epochs * steps_per_epoch):,} steps"]
    if given.flip is None:
        why = ("a built-in set whose mirror images keep their class" if cfg.flip else
               "under two epochs: each image is seen once or so, and teaches more as it is"
               if data.mirror_invariant is True
               else "a mirror image may be another class here; --flip turns them on")
        parts.append(f"mirror flips {'on' if cfg.flip else 'off'} ({why})")
    else:
        parts.append(f"mirror flips {'on' if cfg.flip else 'off'}")
    if data.streaming:
        parts.append(f"random resized crops of {cfg.crop_scale:.0%} to 100% of the area")
    else:
        parts.append(f"crops of +-{cfg.crop_pad} px" if cfg.crop_pad else "no crops")
    parts.append(f"RandAugment {cfg.randaug_n} ops at {cfg.randaug_m}" if cfg.randaug_n else "no RandAugment")
    parts.append(f"mixup {cfg.mixup}" if cfg.mixup else "no mixup")
    if cfg.random_erase:
        parts.append(f"random erasing {cfg.random_erase:.0%} of images")
    return f"recipe {cfg.recipe}: " + "; ".join(parts)
