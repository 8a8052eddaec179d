"""WebDataset shards: tar files of samples (`<key>.<ext>` an image file, `<key>.cls` its class index),
on disk or behind URLs, read with the `webdataset` library (`pip install 'mixerlab[data]'`).

`pack` writes them from an image folder, the image files' own bytes (nothing re-encoded), with a
`dataset.json` beside them: the class names, the image size and colour to train at, and each shard's
sample count (so that an epoch's length is known without reading the shards).

`ShardStream` reads one split. Shards are dealt to (process, worker) slots, so that no two slots see
the same sample; in training each epoch deals a new shard order and each slot shuffles its samples in a
buffer, all seeded from (run seed, epoch, slot), and a slot that runs out starts its shards again, so
every process takes the same number of steps. Its `state_dict` is how many samples it has read this
epoch: torchdata's StatefulDataLoader keeps one per worker and the order in which it took batches
from them, so an epoch stopped at step k resumes with exactly the batches the uninterrupted run got.
"""

from __future__ import annotations

import copy
import logging
import random
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import DataError
from ..io_utils import atomic_write_json
from .datasets import StreamDataset
from .shard_index import INDEX, check_counts, http_opener, is_url, read_index
from .stream import NO_SAMPLE, decode_sample, epoch_seed, loader_options

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff", "gif")
SHUFFLE_BUFFER = 500  # samples per worker; about 50 MB of 224 px JPEGs
SLOT_STRIDE = 1 << 40  # sample ids: slot * SLOT_STRIDE + position in the slot's stream


def _wds():
    try:
        import webdataset
    except ImportError:
        raise DataError("WebDataset shards need the webdataset package: pip install 'mixerlab[data]'") from None
    import sys

    # timeouts (shard_index.py); the package's `gopen` attribute is the function, hence sys.modules
    sys.modules["webdataset.gopen"].gopen_schemes.update(http=http_opener, https=http_opener)
    return webdataset


def is_shard_spec(name: str) -> bool:
    """A tar path or pattern ('shards/train-{000000..000009}.tar'), a URL of one, or a packed folder."""
    return ".tar" in name or Path(name).joinpath(INDEX).is_file()


def expand(spec: str) -> list[str]:
    import braceexpand

    return [u for part in spec.split("::") for u in braceexpand.braceexpand(part)]


def describe_shard_error(e: Exception) -> str:
    """'URL: ReadError: what went wrong', from an exception webdataset decorated with its source."""
    url = next((a for a in reversed(e.args) if isinstance(a, str) and ("/" in a or a.endswith(".tar"))), None)
    first = str(e.args[0]).split(" @ <")[0] if e.args and isinstance(e.args[0], str) else ""
    return f"{url or 'a shard'}: {type(e).__name__}{': ' + first if first else ''}"


def raise_if_no_sample(errors: list[str]) -> None:
    fatal = next((e for e in errors if e.startswith(NO_SAMPLE)), None)
    if fatal is not None:
        raise DataError(fatal)


def _sample_image(sample: dict) -> bytes | None:
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    return sample[key] if key else None


class ShardStream(IterableDataset):
    """One split of a sharded dataset, decoded in the DataLoader's workers; see the module docstring."""

    def __init__(self, urls: list[str], counts: list[int], channels: int, train: bool, workers: int = 0,
                 num_classes: int = 1 << 62):
        self.urls, self.counts, self.channels, self.train, self.workers = urls, counts, channels, train, workers
        self.num_classes = num_classes
        self.transform: Callable | None = None
        self.seed, self.rank, self.world_size = 0, 0, 1
        self.epoch, self._skip, self._read = 0, 0, 0

    def __len__(self) -> int:
        return sum(self.counts)

    # -- the position, for StatefulDataLoader -----------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "read": self._read}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._skip = state["epoch"], state["read"]

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """`start` is carried by the loader's saved state instead (see the module docstring)."""
        self.epoch, self._skip = epoch, 0

    # -- reading ------------------------------------------------------------------------------------
    def _slot(self) -> tuple[int, int]:
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * n + w, self.world_size * n

    def _urls(self, slot: int, slots: int, read: list[int]) -> Iterator[dict]:
        """The slot's shards: once in order to evaluate; in training a new deal every round, until a
        whole round gives no sample (`read[0]` counts them), when every shard is unreadable."""
        if not self.train:
            yield from ({"url": u} for u in self.urls[slot::slots])
            return
        for rnd in range(1 << 30):
            if rnd and not read[0]:
                return
            read[0] = 0
            order = list(self.urls)
            random.Random(f"{self.seed}/{self.epoch}/{rnd}").shuffle(order)
            yield from ({"url": u} for u in order[slot::slots])

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor | None, int, str | None]]:
        wds = _wds()
        slot, slots = self._slot()
        errors: list[str] = []
        reported: set[str] = set()  # a damaged shard is named once per reader, not every round
        read = [0]

        def note(e: Exception) -> bool:  # a shard that cannot be read: named, and the stream goes on
            text = describe_shard_error(e)
            if text not in reported:
                reported.add(text)
                errors.append(text)
            return True

        def counted(it: Iterator[dict]) -> Iterator[dict]:  # samples read from the tars, before any buffer
            for sample in it:
                read[0] += 1
                yield sample

        samples = counted(wds.tariterators.tarfile_samples(self._urls(slot, slots, read), handler=note))
        if self.train:
            rng = random.Random(f"{self.seed}/{self.epoch}/{slot}")
            samples = wds.shuffle(SHUFFLE_BUFFER, SHUFFLE_BUFFER // 5, rng=rng)(samples)
        self._read = self._skip
        base = epoch_seed(self.seed, self.epoch) + slot
        i = -1
        for i, sample in enumerate(samples):
            if i < self._skip:  # resuming: read past what the stopped run had taken, decode nothing
                errors.clear()  # reported before the stop
                continue
            self._read = i + 1
            while errors:
                yield slot * SLOT_STRIDE + i, None, -1, errors.pop(0)
            yield self._decode(sample, slot * SLOT_STRIDE + i, (base * SLOT_STRIDE + i) % (1 << 63))
        mine = self.urls[slot::slots]
        if i < 0 and mine and (self.train or errors):  # nothing at all came out of this slot's shards
            yield slot * SLOT_STRIDE, None, -1, (
                f"{NO_SAMPLE}{len(mine)} shard(s) gave no sample ({', '.join(mine[:3])}"
                f"{', ...' if len(mine) > 3 else ''}): {'; '.join(errors[:3]) or 'they are empty'}")
        while errors:
            yield slot * SLOT_STRIDE + max(i, 0), None, -1, errors.pop(0)

    def _decode(self, sample: dict, sid: int, seed: int) -> tuple[int, torch.Tensor | None, int, str | None]:
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        data = _sample_image(sample)
        if data is None or "cls" not in sample:
            return sid, None, -1, f"{name}: no image or no .cls in the sample (keys {sorted(sample)})"
        try:
            label = int(sample["cls"])
        except ValueError:
            return sid, None, -1, f"{name}: .cls is not an integer"
        if not 0 <= label < self.num_classes:
            return sid, None, -1, f"{name}: label {label} is not one of the {self.num_classes} classes of {INDEX}"
        x, err = decode_sample(data, name, self.channels, self.transform, seed if self.train else None)
        return sid, x, label, err

    # -- the interface FolderStream has too ---------------------------------------------------------
    def train_loader(self, transform: Callable, batch_size: int, seed: int, rank: int, world_size: int,
                     device: torch.device):
        from torchdata.stateful_dataloader import StatefulDataLoader

        if len(self.urls) < world_size:
            raise DataError(f"{len(self.urls)} training shard(s) cannot feed {world_size} processes: pack with "
                            f"a smaller --shard-size")
        workers = min(self.workers, len(self.urls) // world_size)
        if workers < self.workers:
            log.warning("%d shards feed %d worker(s) per process, not %d: a worker needs a shard of its own",
                        len(self.urls), workers, self.workers)
        self.transform, self.seed, self.rank, self.world_size = transform, seed, rank, world_size
        opts = loader_options(workers, device)
        opts["persistent_workers"] = False  # each epoch's workers start from the epoch's deal
        with warnings.catch_warnings():  # torchdata 0.11 calls a torch API that torch now deprecates
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            return StatefulDataLoader(self, batch_size=batch_size, **opts), self

    def eval_batches(self, model_cfg, batch_size: int, rank: int = 0, world_size: int = 1):
        from .transforms import eval_image

        once = copy.copy(self)  # every sample once, in order, whichever split this is
        once.train, once.rank, once.world_size = False, rank, world_size
        once.transform = partial(eval_image, cfg=model_cfg)
        workers = min(self.workers, max(len(self.urls) // world_size, 1))
        for b in DataLoader(once, batch_size=batch_size, **loader_options(workers, torch.device("cpu"))):
            raise_if_no_sample(b.errors)
            yield b.ids, b.images, b.labels, b.errors


def open_shards(spec: str, val_spec: str | None, img_size: tuple[int, int] | None, workers: int
                ) -> StreamDataset:
    """Training shards from `spec` (a pattern, or a folder `pack` wrote), validation shards from
    `val_spec`, else those dataset.json lists, else the same pattern with 'train' replaced by 'val'."""
    if Path(spec).joinpath(INDEX).is_file():
        base, index = spec, read_index(spec)
        spec = f"{spec.rstrip('/')}/{index['splits']['train']['pattern']}"
    else:
        base = spec.rsplit("/", 1)[0] if "/" in spec else "."
        index = read_index(base)
    if index is None:
        raise DataError(f"{base}: no {INDEX} beside the shards; write them with `mixerlab data pack`, which "
                        f"records the classes, the image size and each shard's sample count")
    if val_spec is None:  # the validation shards the index lists, else the pattern with train -> val
        val = index["splits"].get("val")
        val_spec = f"{base.rstrip('/')}/{val['pattern']}" if val else spec.replace("train", "val")
    counts = {**index["splits"]["train"]["counts"], **index["splits"].get("val", {}).get("counts", {})}
    size = tuple(img_size or index["img_size"])
    channels = index["channels"]

    def split(pattern: str, train: bool) -> ShardStream:
        urls = expand(pattern)
        missing = [u for u in urls if u.rsplit("/", 1)[-1] not in counts]
        if missing:
            raise DataError(f"{pattern}: {len(missing)} shard(s) not in {base}/{INDEX}, e.g. {missing[0]}")
        if not is_url(urls[0]):
            absent = [u for u in urls if not Path(u).is_file()]
            if absent:
                raise DataError(f"{pattern}: {len(absent)} of {len(urls)} shard(s) missing, e.g. {absent[0]}")
        check_counts(urls, counts, f"{base}/{INDEX}")
        return ShardStream(urls, [counts[u.rsplit("/", 1)[-1]] for u in urls], channels, train, workers,
                           len(index["classes"]))

    if val_spec == spec:
        raise DataError(f"{spec}: which shards are for validation? Pass --val-data PATTERN")
    train, val = split(spec, True), split(val_spec, False)
    log.info("%s: %s training images in %d shard(s), %s validation images in %d, at %dx%d, %s, %d worker(s)",
             spec, f"{len(train):,}", len(train.urls), f"{len(val):,}", len(val.urls), size[0], size[1],
             "grey" if channels == 1 else "RGB", workers)
    return StreamDataset(Path(base).name or base, train, val, index["classes"], size, channels)


def pack(items_by_split: dict[str, list[tuple[Path, int]]], classes: list[str], out: Path, shard_size: int,
         img_size: tuple[int, int], channels: int, progress: bool = True) -> dict:
    """Write `<split>-NNNNNN.tar` shards of `shard_size` samples and dataset.json into `out`."""
    wds = _wds()
    from tqdm import tqdm

    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: is a file; give a folder to write the shards into")
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        splits = {name: _pack_split(wds, tqdm, name, items, out, shard_size, progress, written)
                  for name, items in items_by_split.items()}
        index = {"format": "webdataset", "classes": classes, "img_size": list(img_size), "channels": channels,
                 "splits": splits}
        atomic_write_json(out / INDEX, index)
    except BaseException:  # an interrupted or failed pack leaves nothing half-written behind
        for f in written:
            f.unlink(missing_ok=True)
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return index


def _pack_split(wds, tqdm, name: str, items: list[tuple[Path, int]], out: Path, shard_size: int, progress: bool,
                written: list[Path]) -> dict:
    # ShardWriter formats its pattern with %: a '%' in the folder's own name must not be read as one
    pattern = str(out).replace("%", "%%") + f"/{name}-%06d.tar"
    counts: dict[str, int] = {}
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
        for i, (path, label) in enumerate(tqdm(items, desc=f"pack {name}", disable=not progress)):
            key = f"{i:09d}-" + re.sub(r"[^A-Za-z0-9_-]", "_", Path(path).stem)  # names the file in errors
            sink.write({"__key__": key, path.suffix.lower().lstrip("."): Path(path).read_bytes(),
                        "cls": str(label).encode()})
            shard = Path(sink.fname)
            if shard.name not in counts:
                written.append(shard)
            counts[shard.name] = counts.get(shard.name, 0) + 1
    last = (len(counts) - 1) if counts else 0
    return {"pattern": f"{name}-{{000000..{last:06d}}}.tar", "counts": counts}


def pack_folder(root: Path, out: Path, shard_size: int, val_split: float = 0.1, seed: int = 0,
                img_size: tuple[int, int] | None = None, progress: bool = True) -> dict:
    """`mixerlab data pack`: an ImageFolder tree (train/ with val/ and/or test/, or one folder split) as
    shards; a test/ folder becomes test shards, listed in dataset.json beside the others."""
    from .folders import STREAM_DEFAULT_SIZE, _sample_shape, _split_items

    if shard_size < 1:
        raise DataError(f"--shard-size must be at least 1, got {shard_size}")
    classes, train_items, val_items, test_items = _split_items(Path(root), val_split, seed)
    # Shards are read in order and shuffled only within a buffer: write the samples in random order,
    # or a buffer would hold one class at a time.
    rng = torch.Generator().manual_seed(seed)
    train_items = [train_items[i] for i in torch.randperm(len(train_items), generator=rng).tolist()]
    size, channels = _sample_shape(train_items, img_size, seed)
    if img_size is None and max(size) > STREAM_DEFAULT_SIZE:
        size = (STREAM_DEFAULT_SIZE, STREAM_DEFAULT_SIZE)
    splits = {"train": train_items, "val": val_items, **({"test": test_items} if test_items else {})}
    return pack(splits, classes, Path(out), shard_size, size, channels, progress)
