"""Any dataset by name or path: the built-in sets (datasets.py), an ImageFolder tree (folders.py, in
memory or streamed) or WebDataset shards (shards.py, always streamed)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DataError
from .datasets import BUILTIN, Dataset, Split, StreamDataset, load_cifar, load_idx_dataset
from .folders import load_image_folder
from .shards import is_shard_spec, open_shards
from .stream import default_workers


def load_dataset(name: str = "fashion-mnist", data_dir: str | None = None, img_size: tuple[int, int] | None = None,
                 val_split: float = 0.1, seed: int = 0, strict: bool = False, download: bool = True,
                 stream: bool | None = None, workers: int | None = None, val_data: str | None = None,
                 budget_bytes: int | None = None) -> Dataset | StreamDataset:
    """Any source by name or path (see the module docstring). `stream`: True streams a folder from
    disk, False decodes it into memory, None decides by its decoded size against `budget_bytes`."""
    if name in ("fashion-mnist", "mnist", "cifar10", "cifar100"):
        if stream:
            raise DataError(f"--stream is for image folders and shards; {name} is read into memory")
        ds = load_idx_dataset(name, data_dir, download=download) if "mnist" in name else load_cifar(name, data_dir)
        return hold_out(ds, val_split, seed)
    workers = default_workers() if workers is None else workers
    if is_shard_spec(name):
        if stream is False:
            raise DataError(f"{name}: shards are always streamed; drop --no-stream")
        return open_shards(name, val_data, img_size, workers)
    path = Path(name).expanduser()
    if path.exists():
        return load_image_folder(path, img_size, val_split, seed, strict, stream, budget_bytes, workers)
    raise DataError(f"unknown dataset {name!r}: use one of {', '.join(BUILTIN)}, an ImageFolder path or "
                    f"WebDataset shards ('shards/train-{{000000..000009}}.tar')")


def hold_out(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """A built-in set with `fraction` of its training images held out as validation (a seeded draw),
    so that a run chooses its best epoch on images it never trains on and its test images stay for
    the figure it reports. `fraction` 0: no validation; the run keeps its last epoch."""
    if not 0 <= fraction < 1:
        raise DataError(f"--val-split must be at least 0 and below 1, got {fraction}")
    n_val = int(round(len(ds.train) * fraction))
    if n_val == 0:
        return ds
    order = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(seed))
    held, kept = order[:n_val].sort().values, order[n_val:].sort().values
    t = ds.train
    return Dataset(ds.name, Split(t.images[kept], t.labels[kept]), Split(t.images[held], t.labels[held]),
                   ds.classes, ds.mirror_invariant, ds.test)
