"""Atomic file writes: a temporary file in the same folder, fsync, then rename. A crash leaves either
the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import MixerlabError


class DiskFullError(MixerlabError, OSError):
    """The disk filled up while a file was written; the previous version of the file is kept."""


class OutputError(MixerlabError, OSError):
    """An output path that cannot be written: under a file, in a folder without permission."""


def writable_folder(folder: Path, target: Path | None = None) -> None:
    """Make `folder` (and its parents) or say in one line why it cannot be written into."""
    target = target or folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not folder.is_dir():
            raise NotADirectoryError
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise OutputError(f"cannot write {target}: {blocker} is a file, not a folder") from None
    except PermissionError:
        raise OutputError(f"cannot write {target}: no permission to create {folder}") from None


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then move the finished file over `path`."""
    path = Path(path)
    writable_folder(path.parent, path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except PermissionError:
        raise OutputError(f"cannot write {path}: no permission to write in {path.parent}") from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the mode a plain open() would
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _is_disk_full(e):
            free = shutil.disk_usage(path.parent).free
            kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
            raise DiskFullError(f"no space left on the disk holding {path.parent} ({free / 2**20:.1f} MiB free) "
                                f"while writing {path}; {kept}. Free some space and run again.") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _is_disk_full(e: BaseException) -> bool:
    """ENOSPC or EDQUOT, also when a library wraps the OSError in its own exception."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
