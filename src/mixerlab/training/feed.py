"""Where a step's images come from: `MemoryFeed` for data decoded in memory (augmented a whole batch
at a time on the device), `StreamFeed` for data streamed through DataLoader workers (data/stream.py,
data/shards.py). Both yield, step by step from a given step of an epoch, the step's micro-batches and
the names of the files that could not be used."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DistributedSampler

from ..data.shards import raise_if_no_sample
from ..data.stream import train_transform
from ..data.transforms import BatchAugment
from ..errors import DataError

Step = tuple[list[tuple[torch.Tensor, torch.Tensor]], list[str]]
MAX_NAMED_BAD = 10  # unusable files named in the log per epoch; all are counted
log = logging.getLogger(__name__)


class MemoryFeed:
    def __init__(self, run) -> None:
        cfg = run.cfg
        self.run, self.train = run, run.data.train
        self.augment = BatchAugment(cfg.crop_pad, cfg.flip, cfg.randaug_n, cfg.randaug_m, cfg.random_erase)

    def steps(self, epoch: int, start: int) -> Iterator[Step]:
        """Lazily: each step's batches are drawn when asked for, after the trainer seeded the step."""
        run, cfg = self.run, self.run.cfg
        sampler = DistributedSampler(range(len(self.train)), num_replicas=run.ctx.world_size, rank=run.ctx.rank,
                                     shuffle=True, seed=cfg.seed, drop_last=True)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        micro = cfg.batch_size
        for step in range(start, run.steps_per_epoch):
            base = step * micro * cfg.accum_steps
            idx = [order[base + i * micro: base + (i + 1) * micro] for i in range(cfg.accum_steps)]
            yield [(self.augment(self.train.images[i].to(run.device)), self.train.labels[i]) for i in idx], []

    prefetched = 0  # batches made ahead of the steps: none, each is augmented when asked for

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state: Any) -> None:
        pass


class StreamFeed:
    def __init__(self, run) -> None:
        cfg, ctx, mcfg = run.cfg, run.ctx, run.model.config
        self.run = run
        transform = train_transform(tuple(mcfg.img_size), cfg.flip, cfg.randaug_n, cfg.randaug_m, cfg.crop_scale,
                                    mcfg.interpolation, cfg.random_erase)
        self.loader, self.position = run.data.train.train_loader(transform, cfg.batch_size, cfg.seed, ctx.rank,
                                                                 ctx.world_size, run.device)
        self._saved: dict | None = None  # the loader's state from a checkpoint, used by the next epoch

    def steps(self, epoch: int, start: int) -> Iterator[Step]:
        run, cfg = self.run, self.run.cfg
        self.position.set_epoch(epoch, start * cfg.batch_size * cfg.accum_steps)
        if self._saved is not None:
            self.loader.load_state_dict(self._saved)
            self._saved = None
        elif start and hasattr(self.loader, "load_state_dict"):
            raise DataError("the checkpoint holds no position of the shard reader; it cannot resume mid-epoch")
        it = iter(self.loader)
        try:
            for _ in range(start, run.steps_per_epoch):
                batches, errors = [], []
                for _ in range(cfg.accum_steps):
                    b = next(it)
                    raise_if_no_sample(b.errors)
                    errors += b.errors
                    if len(b.labels):
                        batches.append((b.images.to(run.device, non_blocking=True), b.labels))
                yield batches, errors
        finally:
            # The epoch ends before the reader does (shards repeat; a sampler leaves a partial batch):
            # stop its workers now rather than whenever the garbage collector finds the iterator.
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    @property
    def prefetched(self) -> int:
        """Batches the reader's workers decode ahead of the steps (and so, at an epoch's start, while the
        steps do not yet compete with them for the cores)."""
        return (getattr(self.loader, "num_workers", 0) or 0) * (getattr(self.loader, "prefetch_factor", 0) or 0)

    def state_dict(self) -> dict | None:
        """Where the reader stands (shards); a folder's position is the step alone, so None."""
        return self.loader.state_dict() if hasattr(self.loader, "state_dict") else None

    def load_state_dict(self, state: dict | None) -> None:
        self._saved = state


def make_feed(run) -> MemoryFeed | StreamFeed:
    return StreamFeed(run) if run.data.streaming else MemoryFeed(run)


def note_bad_images(run, errors: list[str]) -> None:
    """Files a worker could not use: counted and named (the first few of each epoch), or the end of
    the run under --strict."""
    if run.cfg.strict:
        raise DataError(f"{errors[0]} (--strict stops at the first unusable image; without it, it is skipped)")
    p = run.progress
    if p.epoch_bad_images < MAX_NAMED_BAD:
        for e in errors[: MAX_NAMED_BAD - p.epoch_bad_images]:
            log.warning("skipped an unusable image: %s", e)
    p.epoch_bad_images += len(errors)
