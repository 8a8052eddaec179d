"""Any dataset by name or path: the built-in sets (datasets.py) or an ImageFolder tree (folders.py)."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .datasets import BUILTIN, Dataset, load_cifar, load_idx_dataset
from .folders import load_image_folder


def load_dataset(name: str = "fashion-mnist", data_dir: str | None = None, img_size: tuple[int, int] | None = None,
                 val_split: float = 0.1, seed: int = 0, strict: bool = False, download: bool = True) -> Dataset:
    """Any source by name or path (see the module docstring)."""
    if name in ("fashion-mnist", "mnist"):
        return load_idx_dataset(name, data_dir, download=download)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, data_dir)
    path = Path(name).expanduser()
    if path.exists():
        return load_image_folder(path, img_size, val_split, seed, strict)
    raise DataError(f"unknown dataset {name!r}: use one of {', '.join(BUILTIN)} or an ImageFolder path")
