"""ImageFolder trees: <root>/<class>/<images>, with train/ and val/ and/or test/ folders or one
folder split by --val-split, decoded into memory at one size and colour (`choose_shape`), or streamed from
disk (stream.py) when the decoded images would not fit the memory budget."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .datasets import IMAGE_EXTS, Dataset, Split, StreamDataset
from .decode import DecodeError, image_info, read_image
from .stream import FolderStream, default_workers

log = logging.getLogger(__name__)

SURVEY_SAMPLE = 256  # headers read to choose a size and colour before deciding to stream
STREAM_DEFAULT_SIZE = 224  # the paper's training size: images larger than this stream at it


def _list_images(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    items, empty, left_out = [], [], []
    for i, c in enumerate(classes):
        files = []
        for p in sorted((root / c).rglob("*")):
            if p.suffix.lower() not in IMAGE_EXTS or not p.is_file():
                continue
            # macOS leaves '._name.jpg' metadata beside each file it copies; an empty file is no image
            if p.name.startswith("._") or p.stat().st_size == 0:
                left_out.append(p)
            else:
                files.append(p)
        if not files:
            empty.append(c)
        items += [(p, i) for p in files]
    if left_out:
        log.warning("%s: left out %d file(s) that are macOS '._' metadata or empty (0 bytes), e.g. %s", root,
                    len(left_out), left_out[0])
    if empty:
        raise DataError(f"{root}: class folders with no images: {', '.join(empty)}")
    return classes, items


def _report_skipped(bad: list[DecodeError], kept: int) -> None:
    if bad:
        shown = "; ".join(str(e) for e in bad[:10])
        log.warning("skipped %d unusable image(s): %s%s", len(bad), shown, " ..." if len(bad) > 10 else "")
    if not kept:
        raise DataError("no readable images")


def _survey(items: list[tuple[Path, int]], strict: bool) -> tuple[list[tuple[Path, int]], list[tuple[int, int, int]]]:
    """Each image's (height, width, channels) from its header; unusable files are named and skipped
    (or fail the run under `strict`)."""
    kept, infos, bad = [], [], []
    for path, label in items:
        try:
            infos.append(image_info(path))
            kept.append((path, label))
        except DecodeError as e:
            if strict:
                raise
            bad.append(e)
    _report_skipped(bad, len(kept))
    return kept, infos


def choose_shape(infos: list[tuple[int, int, int]], img_size: tuple[int, int] | None) -> tuple[tuple[int, int], int]:
    """The rule for a folder of mixed images: the most common size (the smaller one on a tie) unless
    `img_size` is given, and the most common colour (RGB on a tie, since grey converts to RGB losslessly)."""
    sizes = Counter((h, w) for h, w, _ in infos)
    size = img_size or min(sizes, key=lambda s: (-sizes[s], s[0] * s[1]))
    colour = Counter(c for _, _, c in infos)
    channels = 1 if colour[1] > colour[3] else 3
    return tuple(size), channels  # type: ignore[return-value]


def _decode(items: list[tuple[Path, int]], size: tuple[int, int], channels: int, strict: bool) -> Split:
    images, labels, bad = [], [], []
    for path, label in items:
        try:
            images.append(read_image(path, channels, size))
            labels.append(label)
        except DecodeError as e:
            if strict:
                raise
            bad.append(e)
    _report_skipped(bad, len(images))
    return Split(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64))


def _describe(root: Path, infos: list[tuple[int, int, int]], size: tuple[int, int], channels: int,
              forced: bool) -> str:
    resized = sum((h, w) != tuple(size) for h, w, _ in infos)
    converted = sum(c != channels for _, _, c in infos)
    why = "--img-size" if forced else "the most common size"
    return (f"{root}: {len(infos)} images at {size[0]}x{size[1]} ({why}), {'grey' if channels == 1 else 'RGB'} "
            f"(the most common); {resized} resized, {converted} converted to {'grey' if channels == 1 else 'RGB'}")


def _split_items(root: Path, val_split: float, seed: int) -> tuple[list[str], list, list, list]:
    """(classes, train items, val items, test items). With train/ and val/ folders, val/ chooses
    best.pt; a test/ beside them is only scored. With train/ and test/ but no val/, `val_split` of
    train/ is held out to choose on, so that test/ never chooses anything (as with the built-in sets).
    One folder of class folders is split by `val_split`."""
    train_dir = root / "train"
    if train_dir.is_dir() and ((root / "val").is_dir() or (root / "test").is_dir()):
        classes, train_items = _list_images(train_dir)
        test_items = _same_classes(root, "test", classes) if (root / "test").is_dir() else []
        if (root / "val").is_dir():
            return classes, train_items, _same_classes(root, "val", classes), test_items
        train_items, val_items = _hold_out(root, train_items, val_split, seed, "train/ and test/ but no val/ folder")
        return classes, train_items, val_items, test_items
    classes, items = _list_images(root)
    return (classes, *_hold_out(root, items, val_split, seed, "no train/ and val/ folders"), [])


def _same_classes(root: Path, name: str, classes: list[str]) -> list:
    got, items = _list_images(root / name)
    if got != classes:
        only_t, only_o = sorted(set(classes) - set(got)), sorted(set(got) - set(classes))
        raise DataError(f"{root}: train and {name} have different classes "
                        f"(only in train: {only_t}; only in {name}: {only_o})")
    return items


def _hold_out(root: Path, items: list, val_split: float, seed: int, layout: str) -> tuple[list, list]:
    """(train, val): a seeded `val_split` of `items` held out; none with 0 (everything trains)."""
    if not 0 <= val_split < 1:
        raise DataError(f"{root}: {layout}; pass --val-split between 0 and 1")
    if val_split == 0:  # everything is training data (embed, or a run that says it scores nothing)
        return items, []
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(len(items) * val_split)))
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def memory_budget() -> int:
    """Bytes a decoded dataset may take: half of the memory available now."""
    try:
        import psutil

        return psutil.virtual_memory().available // 2
    except ImportError:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def _sample_shape(items: list[tuple[Path, int]], img_size: tuple[int, int] | None, seed: int
                  ) -> tuple[tuple[int, int], int]:
    """choose_shape over the headers of up to SURVEY_SAMPLE files picked at random: a big folder's
    size and colour without opening every file."""
    pick = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:SURVEY_SAMPLE].tolist()
    infos = []
    for i in pick:
        try:
            infos.append(image_info(items[i][0]))
        except DecodeError:
            pass  # the workers name it when they meet it
    if not infos:
        raise DataError(f"none of {len(pick)} images sampled from the folder could be read")
    return choose_shape(infos, img_size)


def load_image_folder(root: Path, img_size: tuple[int, int] | None = None, val_split: float = 0.1,
                      seed: int = 0, strict: bool = False, stream: bool | None = None,
                      budget_bytes: int | None = None, workers: int | None = None) -> Dataset | StreamDataset:
    """An ImageFolder tree: decoded once into memory at one size and colour (`choose_shape`), or
    streamed from disk (`stream=True`, or None and the decoded images would take more than
    `budget_bytes`, by default half the memory available)."""
    classes, train_items, val_items, test_items = _split_items(root, val_split, seed)
    size, channels = _sample_shape(train_items, img_size, seed)
    if stream is None:
        need = (len(train_items) + len(val_items) + len(test_items)) * size[0] * size[1] * channels
        budget = memory_budget() if budget_bytes is None else budget_bytes
        stream = need > budget
        if stream:
            log.info("%s: %s images would take %.1f GB decoded at %dx%d, over the memory budget of %.1f GB: "
                     "streaming them from disk", root, f"{len(train_items) + len(val_items):,}", need / 1e9,
                     size[0], size[1], budget / 1e9)
    if stream:
        if img_size is None and max(size) > STREAM_DEFAULT_SIZE:
            size = (STREAM_DEFAULT_SIZE, STREAM_DEFAULT_SIZE)
        return _streamed(root, classes, train_items, val_items, test_items, size, channels, workers)
    train_items, train_infos = _survey(train_items, strict)
    val_items, val_infos = _survey(val_items, strict) if val_items else ([], [])
    test_items, test_infos = _survey(test_items, strict) if test_items else ([], [])
    size, channels = choose_shape(train_infos, img_size)
    log.info(_describe(root, train_infos + val_infos + test_infos, size, channels, img_size is not None))
    train = _decode(train_items, size, channels, strict)
    val = _decode(val_items, size, channels, strict) if val_items else None
    test = _decode(test_items, size, channels, strict) if test_items else None
    return Dataset(root.name, train, val, classes, test=test)


def _streamed(root: Path, classes: list[str], train_items: list, val_items: list, test_items: list,
              size: tuple[int, int], channels: int, workers: int | None) -> StreamDataset:
    workers = default_workers() if workers is None else workers
    log.info("%s: streaming %s training, %s validation and %s test images at %dx%d, %s, with %d worker process(es)",
             root, f"{len(train_items):,}", f"{len(val_items):,}", f"{len(test_items):,}", size[0], size[1],
             "grey" if channels == 1 else "RGB", workers)

    def stream(items: list) -> FolderStream | None:
        return FolderStream(items, channels, size, workers) if items else None

    return StreamDataset(root.name, stream(train_items), stream(val_items), classes, tuple(size), channels,
                         test=stream(test_items))
