"""Datasets as in-memory uint8 tensors: (N, C, H, W) images, (N,) labels, and the class names.

Small datasets (Fashion-MNIST, MNIST, CIFAR, a modest ImageFolder) fit in memory many times over, and
keeping them there lets augmentation run on whole batches (`augment.py`), so the data never dominates
the step time. Sources:

- `fashion-mnist` (the default) and `mnist`: IDX files (gzipped or not), found in `--data-dir` or
  $MIXERLAB_DATA, ~/.cache/mixerlab, /usr/share/datasets (Debian's `dataset-fashion-mnist`),
  else downloaded and checked against known checksums;
- `cifar10`, `cifar100`: the python-format folders (`cifar-10-batches-py`, `cifar-100-python`), read
  through torchvision;
- any other value is a path: an ImageFolder tree, with `train/` and `val/` and/or `test/` folders (test/
  is only scored, never chosen on) or a single folder split with `--val-split`.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..io_utils import atomic_write_bytes

log = logging.getLogger(__name__)

BUILTIN = ("fashion-mnist", "mnist", "cifar10", "cifar100")

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",  # the official test set: Dataset.test
    "val_labels": "t10k-labels-idx1-ubyte",
}
# sha256 of the *decompressed* files, so a recompressed copy (Debian's) checks as well as the original.
IDX_SHA256 = {
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
MIRRORS = {
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/"],
}
SYSTEM_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist", "mnist": "/usr/share/datasets/mnist"}
DEBIAN_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}  # installs into SYSTEM_DIRS
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def eval_batches(self, model_cfg, batch_size: int, rank: int = 0, world_size: int = 1):
        """(indices, uint8 images, labels, errors) batches of this rank's part: every world_size-th image.
        The images keep the data's size; `prepare` brings them to the model's."""
        for b in torch.arange(rank, len(self), world_size).split(batch_size):
            yield b, self.images[b], self.labels[b], []


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split | None  # what a run selects its best epoch on; None: nothing is selected (the last epoch is kept)
    classes: list[str]
    # Whether a mirror image is still of the same class: True for the built-in sets where it is
    # (clothes, photos), False where it is not (digits), None for a folder nobody has said it of.
    mirror_invariant: bool | None = None
    # Test images: scored at the end of a run and by `eval`, never used to choose anything. The
    # built-in sets' official ones, and a folder's test/; shards have none.
    test: Split | None = None
    streaming = False  # decoded in memory; see StreamDataset

    @property
    def in_chans(self) -> int:
        return self.train.images.shape[1]

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(self.train.images.shape[-2:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class StreamDataset:
    """A dataset read from disk (or a URL) as it trains, in worker processes: data/stream.py for
    folders, data/shards.py for WebDataset shards. Its splits have a length, `eval_batches` and a
    training loader; nothing is decoded up front."""

    name: str
    train: Any
    val: Any
    classes: list[str]
    img_size: tuple[int, int]
    in_chans: int
    mirror_invariant: bool | None = None
    test: Any = None  # a folder's test/, as for Dataset; shards have none
    streaming = True

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ---------------------------------------------------------------------------------------------- IDX
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file (truncated or corrupt?): {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: IDX header says {dims} but holds {body.size} bytes (truncated?)")
    return body.reshape(dims)


def _find_idx_dir(name: str, data_dir: str | None) -> Path | None:
    candidates = []
    for base in (data_dir, os.environ.get("MIXERLAB_DATA"), Path.home() / ".cache" / "mixerlab"):
        if base:
            candidates += [Path(base) / name, Path(base)]
    candidates.append(Path(SYSTEM_DIRS[name]))
    for d in candidates:
        if all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in IDX_FILES.values()):
            return d
    return None


def _sha256_of(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def download_idx(name: str, dest: Path, mirrors: list[str] | None = None) -> Path:
    """Fetch the four official files into `dest` (atomically) and verify their checksums."""
    if not mirrors:
        env = os.environ.get("MIXERLAB_MIRROR")
        mirrors = [env] if env else MIRRORS[name]
    dest.mkdir(parents=True, exist_ok=True)
    for fname in IDX_FILES.values():
        target = dest / f"{fname}.gz"
        if target.is_file():
            continue
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + f"/{fname}.gz"
            try:
                log.info("downloading %s", url)
                with urllib.request.urlopen(url, timeout=60) as r:
                    data = r.read()
            except OSError as e:
                errors.append(f"{url}: {e}")
                continue
            expected = IDX_SHA256.get(name, {}).get(fname)
            got = hashlib.sha256(gzip.decompress(data)).hexdigest() if expected else None
            if expected and got != expected:
                errors.append(f"{url}: checksum mismatch (sha256 {got}, expected {expected})")
                continue
            atomic_write_bytes(target, data)
            break
        else:
            raise DataError(f"could not download {fname} for {name}: " + "; ".join(errors))
    return dest


def load_idx_dataset(name: str, data_dir: str | None = None, download: bool = True) -> Dataset:
    d = _find_idx_dir(name, data_dir)
    if d is None:
        if not download:
            raise DataError(f"{name} not found in --data-dir, $MIXERLAB_DATA, ~/.cache/mixerlab or "
                            f"{SYSTEM_DIRS[name]}")
        dest = Path(data_dir or Path.home() / ".cache" / "mixerlab") / name
        try:
            d = download_idx(name, dest)
        except DataError as e:  # offline, a proxy, a mirror gone: say how to give the files by hand
            files = ", ".join(f"{f}.gz" for f in IDX_FILES.values())
            debian = (f" (on Debian or Ubuntu: apt-get install {DEBIAN_PACKAGES[name]}, which puts them in "
                      f"{SYSTEM_DIRS[name]})") if name in DEBIAN_PACKAGES else f" or {SYSTEM_DIRS[name]}"
            raise DataError(f"{e}. Without a download, put the four files ({files}) in {dest}, in "
                            f"$MIXERLAB_DATA/{name}{debian}, or set MIXERLAB_MIRROR to a URL that serves them"
                            ) from None
    arrays = {}
    for key, fname in IDX_FILES.items():
        path = d / fname if (d / fname).is_file() else d / f"{fname}.gz"
        expected = IDX_SHA256.get(name, {}).get(fname)
        if expected and _sha256_of(path) != expected:
            raise DataError(f"{path}: checksum mismatch: the file is corrupt or not the official {name}")
        arrays[key] = read_idx(path)
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    log.info("%s from %s", name, d)

    def split(prefix: str) -> Split:
        x, y = arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"]
        if len(x) != len(y):
            raise DataError(f"{d}: {prefix} has {len(x)} images but {len(y)} labels")
        return Split(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))

    return Dataset(name, split("train"), None, list(classes), mirror_invariant=name == "fashion-mnist",
                   test=split("val"))


# -------------------------------------------------------------------------------------------- CIFAR
CIFAR_LAYOUT = {  # folder, train files, test file, meta file, label key, names key
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}


class _SafeUnpickler(pickle.Unpickler):
    """The CIFAR python format is pickle. Allow the numpy array reconstruction it needs, nothing else,
    so a tampered data file cannot run code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_file(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path}: missing (expected the python-format CIFAR folder)") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"{path}: not a CIFAR python-format file: {e}") from None
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def load_cifar(name: str, data_dir: str | None = None) -> Dataset:
    folder, train_files, test_file, meta_file, label_key, names_key = CIFAR_LAYOUT[name]
    bases = [b for b in (data_dir, os.environ.get("MIXERLAB_DATA"), Path.home() / ".cache" / "mixerlab") if b]
    root = next((Path(b) / folder for b in bases if (Path(b) / folder).is_dir()), None)
    if root is None:
        raise DataError(
            f"{name}: no '{folder}' folder in {', '.join(map(str, bases))}; unpack the python-format archive "
            f"there (torchvision.datasets.{name.upper()}(root, download=True) fetches it)"
        )

    def split(files: list[str]) -> Split:
        xs, ys = [], []
        for fname in files:
            d = _read_cifar_file(root / fname)
            if "data" not in d or label_key not in d:
                raise DataError(f"{root / fname}: no 'data' or '{label_key}' entry")
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys += list(d[label_key])
        return Split(torch.from_numpy(np.concatenate(xs)), torch.tensor(ys, dtype=torch.int64))

    classes = [c.decode() if isinstance(c, bytes) else c for c in _read_cifar_file(root / meta_file)[names_key]]
    return Dataset(name, split(train_files), None, classes, mirror_invariant=True, test=split([test_file]))
