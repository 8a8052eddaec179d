"""Streaming: images decoded one at a time in DataLoader worker processes, for data that does not fit
in memory (an ImageNet-sized folder, or WebDataset shards, shards.py).

Memory stays flat in the dataset's size: only the file list is held, and each worker decodes the
samples of the batches it is asked for. The training transform is the paper's ImageNet pipeline
(torchvision transforms v2): an Inception-style random resized crop, mirror flips where the data allows
them, RandAugment; mixup is applied to the batch by the training step. Validation resizes and
centre-crops by the model's own preprocessing (`eval_image`).

Exact resume: the sampler hands each worker (index, seed) pairs; a sample's random crop and
RandAugment ops are drawn from its own seed, a function of (run seed, epoch, position in the epoch),
under a forked generator. Which worker decodes it, and how many there are, changes nothing, and an
epoch resumed at step k asks for exactly the samples the uninterrupted run asked for from step k on.

Bad files do not stop a long run: a sample that fails to decode comes back as its error; the batch
is built from the rest and carries the errors to the trainer, which counts and logs them (or stops
under --strict).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..perf.allocator import untune_in_worker
from .decode import DecodeError, decode_image
from .transforms import random_erase

SAMPLE_SEED_STRIDE = 1_000_003
NO_SAMPLE = "no sample could be read: "  # an error that ends the run: a reader's every source failed


def epoch_seed(seed: int, epoch: int) -> int:
    """The base every per-sample seed of an epoch is offset from (folders: by position and rank;
    shards: by reader slot and position)."""
    return (seed * SAMPLE_SEED_STRIDE + epoch) * SAMPLE_SEED_STRIDE


@dataclass
class Batch:
    """What a streaming loader yields: the samples that decoded, and the errors of those that did not."""

    ids: torch.Tensor  # int64 (B,): each sample's index in its split
    images: torch.Tensor  # uint8 (B, C, H, W)
    labels: torch.Tensor  # int64 (B,)
    errors: list[str] = field(default_factory=list)

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        return Batch(self.ids, self.images.pin_memory(), self.labels, self.errors)


def collate(samples: list[tuple[int, torch.Tensor | None, int, str | None]]) -> Batch:
    good = [s for s in samples if s[1] is not None]
    errors = [s[3] for s in samples if s[1] is None]
    if not good:
        return Batch(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 1, 1, 1, dtype=torch.uint8),
                     torch.zeros(0, dtype=torch.int64), errors)
    return Batch(torch.tensor([s[0] for s in good]), torch.stack([s[1] for s in good]),
                 torch.tensor([s[2] for s in good]), errors)


def train_transform(size: tuple[int, int], flip: bool, randaug_n: int, randaug_m: int, crop_scale: float,
                    interpolation: str = "bicubic", random_erase: float = 0.0) -> Callable:
    """Decoded Pillow image -> augmented uint8 (C, H, W) tensor, drawing from torch's generator."""
    from torchvision.transforms import v2  # here: its import costs seconds (transforms.eval_image says why)

    mode = v2.InterpolationMode(interpolation)
    ops: list = [v2.PILToTensor(), v2.RandomResizedCrop(list(size), scale=(crop_scale, 1.0), interpolation=mode,
                                                       antialias=True)]
    if flip:
        ops.append(v2.RandomHorizontalFlip())
    if randaug_n > 0:
        ops.append(v2.RandAugment(num_ops=randaug_n, magnitude=randaug_m))
    if random_erase > 0:  # the in-memory path's erasing, so both paths train on the same distribution
        ops.append(partial(_erase_one, p=random_erase))
    return v2.Compose(ops)


def _erase_one(x: torch.Tensor, p: float) -> torch.Tensor:
    return random_erase(x.unsqueeze(0), p)[0]


def decode_sample(source, name: str, channels: int, transform: Callable, seed: int | None
                  ) -> tuple[torch.Tensor | None, str | None]:
    """(tensor, None), or (None, the reason) for a file that cannot be used."""
    try:
        im = decode_image(source, channels)
    except DecodeError as e:
        return None, f"{name}: {e.explanation}"
    except Exception as e:  # noqa: BLE001 - a worker must not die on one file: name it and go on
        return None, f"{name}: unreadable ({type(e).__name__}: {e})"
    if seed is None:
        return transform(im), None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(im), None


class FolderSamples(torch.utils.data.Dataset):
    """(path, label) items decoded on access; keys are indices or (index, seed) pairs."""

    def __init__(self, items: list[tuple[Path, int]], channels: int, transform: Callable):
        # Two numpy arrays, not a list of objects: worker processes touching Python objects would
        # copy their pages one by one (reference counts), growing each worker with the dataset.
        self.paths = np.array([str(p) for p, _ in items])
        self.labels = np.array([label for _, label in items], dtype=np.int64)
        self.channels, self.transform = channels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        path = str(self.paths[i])
        x, err = decode_sample(path, path, self.channels, self.transform, seed)
        return i, x, int(self.labels[i]), err


class EpochSampler(Sampler):
    """This rank's part of epoch `epoch` in DistributedSampler's order (the in-memory path's), from
    sample `start` on, as (index, seed) pairs."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        s = DistributedSampler(range(self.n), num_replicas=self.world_size, rank=self.rank, shuffle=True,
                               seed=self.seed, drop_last=True)
        s.set_epoch(self.epoch)
        return list(s)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        base = epoch_seed(self.seed, self.epoch)
        order = self.order()
        for pos in range(self.start, len(order)):
            yield order[pos], (base + pos * self.world_size + self.rank) % (2**63)

    def __len__(self) -> int:
        return len(self.order()) - self.start


def default_workers() -> int:
    """Workers share the cores with the training step: most of them, never more than 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def loader_options(workers: int, device: torch.device) -> dict:
    opts: dict = {"num_workers": workers, "collate_fn": collate, "pin_memory": device.type == "cuda"}
    if workers > 0:
        opts.update(persistent_workers=device.type == "cuda", prefetch_factor=4, worker_init_fn=untune_in_worker)
    return opts


@dataclass
class FolderStream:
    """One split of an image folder, streamed: the file list, the colour to decode in, the size to train at."""

    items: list[tuple[Path, int]]
    channels: int
    size: tuple[int, int]
    workers: int = 0

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, n: int, seed: int = 0) -> FolderStream:
        """`n` items drawn at random (all of them if there are fewer)."""
        pick = torch.randperm(len(self.items), generator=torch.Generator().manual_seed(seed))[:n].tolist()
        return FolderStream([self.items[i] for i in pick], self.channels, self.size, self.workers)

    def train_loader(self, transform: Callable, batch_size: int, seed: int, rank: int, world_size: int,
                     device: torch.device) -> tuple[DataLoader, EpochSampler]:
        sampler = EpochSampler(len(self.items), seed, rank, world_size)
        loader = DataLoader(FolderSamples(self.items, self.channels, transform), batch_size=batch_size,
                            sampler=sampler, drop_last=True, **loader_options(self.workers, device))
        return loader, sampler

    def eval_batches(self, model_cfg, batch_size: int, rank: int = 0, world_size: int = 1
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]]:
        from .transforms import eval_image

        data = FolderSamples(self.items, self.channels, partial(eval_image, cfg=model_cfg))
        idx = list(range(rank, len(self.items), world_size))
        loader = DataLoader(torch.utils.data.Subset(data, idx), batch_size=batch_size,
                            **loader_options(self.workers, torch.device("cpu")))
        for b in loader:
            yield b.ids, b.images, b.labels, b.errors

