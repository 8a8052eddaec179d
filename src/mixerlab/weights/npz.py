"""Reading an `.npz` that may be hostile: every entry's npy header is read and checked before any data.

An npz is a zip of `.npy` files, and both layers state sizes: the zip entry its uncompressed size, the
npy header its shape and dtype. `np.load` trusts them, so a 4 MB file with one 4 GB entry is inflated
whole before anything can look at its shape, and a header claiming 10^12 floats ends in numpy's
MemoryError. Here the two must agree, the dtype must be numeric, the total must fit in the memory
this machine has, and a file that inflates past `MAX_RATIO` its stored size (real weights barely
compress) is refused as a zip bomb. Callers check the shapes against the model before `read`.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

MAX_RATIO = 50  # uncompressed / compressed, past which an entry is no array of trained weights
RATIO_FLOOR = 64 << 20  # small entries (zero heads, biases) may compress as well as they like
PREFIXES = ("opt/target/", "params/")  # some published files nest everything under one of these


@dataclass(frozen=True)
class Entry:
    """One array as its headers describe it; `member` is its name inside the zip."""

    member: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on this platform
        return None


def _header(z: zipfile.ZipFile, info: zipfile.ZipInfo, src: str) -> Entry:
    name = info.filename
    with z.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"npy format version {version}")
            offset = f.tell()
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"{src}: entry {name!r} has no readable npy header: {e}") from None
    if dtype.kind not in "biuf" or dtype.hasobject:
        raise CheckpointError(f"{src}: entry {name!r} holds {dtype} values; weights are numbers")
    entry = Entry(name, tuple(int(d) for d in shape), dtype, bool(fortran))
    if info.file_size != offset + entry.nbytes:
        raise CheckpointError(f"{src}: entry {name!r} claims shape {list(entry.shape)} ({entry.nbytes:,} bytes) "
                              f"but the archive says it holds {info.file_size - offset:,}: the file is corrupt "
                              f"or forged")
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise CheckpointError(f"{src}: entry {name!r} inflates from {info.compress_size:,} to {info.file_size:,} "
                              f"bytes (over {MAX_RATIO}x): a zip bomb, not trained weights")
    return entry


def scan(path: str | os.PathLike) -> dict[str, Entry]:
    """Every array's header, keyed by its name without `.npy` (and without a common nesting prefix)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            entries = {}
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    raise CheckpointError(f"{path}: entry {info.filename!r} is not an .npy array")
                entries[info.filename[: -len(".npy")]] = _header(z, info, str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable .npz checkpoint (truncated or corrupt?): {e}") from None
    total, free = sum(e.nbytes for e in entries.values()), available_memory()
    if free is not None and total > free:
        raise CheckpointError(f"{path}: its arrays take {total / 2**30:.2f} GiB and this machine has "
                              f"{free / 2**30:.2f} GiB of memory available")
    for prefix in PREFIXES:
        if entries and all(k.startswith(prefix) for k in entries):
            entries = {k[len(prefix):]: v for k, v in entries.items()}
    return entries


def read(path: str | os.PathLike, entries: dict[str, Entry]) -> dict[str, np.ndarray]:
    """The arrays of `entries` (from `scan`), each read into an array of exactly its checked size."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for key, e in entries.items():
                with z.open(e.member) as f:
                    out[key] = np.lib.format.read_array(f, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable .npz checkpoint (truncated or corrupt?): {err}") from None
    return out
