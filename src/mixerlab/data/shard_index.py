"""`dataset.json`, the index `mixerlab data pack` writes beside WebDataset shards, read as untrusted
input: every key checked like any config, sizes bounded by what the decoder accepts, and the sample
counts it claims compared with the shards themselves where they are local files.

HTTP reads (the index, and the shards, see `http_opener`) have connect and read timeouts, so a server
that stops answering is an error naming the URL, not a run that waits forever."""

from __future__ import annotations

import json
import math
import os
import random
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import DataError
from .decode import MAX_PIXELS

INDEX = "dataset.json"
# per connection attempt and per read; MIXERLAB_HTTP_TIMEOUT_S sets another (a slow link, a test)
HTTP_TIMEOUT_S = float(os.environ.get("MIXERLAB_HTTP_TIMEOUT_S", "30"))
COUNT_CHECKS = 16  # local shards per split whose sample count is checked against the index


def is_url(s: str) -> bool:
    return "://" in s


def http_opener(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any):
    """webdataset's opener for http(s) URLs: urllib with timeouts instead of a `curl` subprocess that
    retries for minutes and has no read timeout."""
    try:
        return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise OSError(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        raise OSError(f"cannot reach it: {getattr(e, 'reason', e)}") from None


def read_index(base: str) -> dict | None:
    """The checked index beside the shards at `base` (a folder or URL), or None when there is none."""
    where = f"{base.rstrip('/')}/{INDEX}"
    try:
        if is_url(base):
            with urllib.request.urlopen(where, timeout=HTTP_TIMEOUT_S) as r:
                raw = r.read(64 << 20)
        elif Path(where).is_file():
            if Path(where).stat().st_size > 64 << 20:
                raise DataError(f"{where}: {Path(where).stat().st_size:,} bytes is no shard index (64 MiB at most)")
            raw = Path(where).read_bytes()
        else:
            return None
        index = json.loads(raw)
    except (OSError, ValueError) as e:
        raise DataError(f"{where}: cannot read the shard index: {e}") from None
    return check_index(index, where)


def _fail(where: str, key: str, problem: str) -> DataError:
    return DataError(f"{where}: key {key!r} {problem}")


def _check_split(split: Any, name: str, where: str) -> None:
    key = f"splits.{name}"
    if not isinstance(split, dict):
        raise _fail(where, key, "must be a mapping with 'pattern' and 'counts'")
    if not isinstance(split.get("pattern"), str) or not split["pattern"]:
        raise _fail(where, f"{key}.pattern", "must be a shard file pattern such as 'train-{000000..000009}.tar'")
    if "/" in split["pattern"] or ".." in split["pattern"].split("{")[0]:
        raise _fail(where, f"{key}.pattern", f"{split['pattern']!r} must name files beside the index")
    counts = split.get("counts")
    if not isinstance(counts, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                               and v >= 0 for k, v in counts.items()):
        raise _fail(where, f"{key}.counts", "must map each shard's file name to its sample count (an integer >= 0)")


def check_index(index: Any, where: str) -> dict:
    """The index as `pack` writes it, or one DataError naming the key and what is allowed."""
    if not isinstance(index, dict):
        raise DataError(f"{where}: a shard index is a JSON object, found {type(index).__name__}")
    for key in ("classes", "img_size", "channels", "splits"):
        if key not in index:
            raise _fail(where, key, "is missing (write the shards with `mixerlab data pack`)")
    classes = index["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise _fail(where, "classes", "must be a non-empty list of class names")
    if len(set(classes)) != len(classes):
        raise _fail(where, "classes", "lists a name twice")
    size = index["img_size"]
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)):
        raise _fail(where, "img_size", f"must be [height, width] in pixels, found {str(size)[:60]}")
    if math.prod(size) > MAX_PIXELS:
        raise _fail(where, "img_size", f"{size} is {math.prod(size):,} pixels, over the decoder's limit of "
                                       f"{MAX_PIXELS:,}")
    if index["channels"] not in (1, 3) or isinstance(index["channels"], bool):
        raise _fail(where, "channels", f"must be 1 (grey) or 3 (RGB), found {index['channels']!r}")
    splits = index["splits"]
    if not isinstance(splits, dict) or "train" not in splits:
        raise _fail(where, "splits", "must hold a 'train' split (and optionally 'val')")
    for name, split in splits.items():
        _check_split(split, name, where)
    return index


def count_samples(path: str) -> int:
    """Samples in a local tar shard (keys with a .cls), from its member headers alone."""
    keys = set()
    with tarfile.open(path) as t:
        for m in t:
            if m.isfile() and m.name.endswith(".cls"):
                keys.add(m.name[: -len(".cls")])
    return len(keys)


def check_counts(urls: list[str], counts: dict[str, int], where: str) -> None:
    """Up to COUNT_CHECKS local shards, chosen at random, against the counts the index claims: an
    epoch's length is computed from them, so a lie would be a silent wrong epoch."""
    local = [u for u in urls if not is_url(u)]
    for u in random.Random(0).sample(local, min(COUNT_CHECKS, len(local))):
        name = u.rsplit("/", 1)[-1]
        try:
            n = count_samples(u)
        except (tarfile.TarError, OSError, EOFError):
            continue  # a damaged shard: the reader names it when it meets it, and goes on with the rest
        if n != counts[name]:
            raise DataError(f"{where}: says {name} holds {counts[name]} samples, the shard holds {n}; "
                            f"pack the folder again with `mixerlab data pack`")
