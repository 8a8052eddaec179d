"""`mixerlab embed`: the pre-logit features of every image of a dataset, written to disk in bounded
memory and resumable after a kill.

While it runs, each batch's features are appended to `features.part` (raw little-endian rows) and its
rows to `index.jsonl`, and `embed_state.json` records how many rows both hold, written after them. A
run that finds a state continues from there (the part files are cut back to the recorded rows first),
so a killed run and an uninterrupted one write the same bytes. At the end the rows are copied, in
chunks, into `features.safetensors`: `features` (N x D, float32 or float16), `labels` (N, int64) and
`split` (N, int8: the position of each row's split in the file's `splits` metadata).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.datasets import Split
from ..data.stream import FolderStream
from ..errors import MixerlabError
from ..io_utils import atomic_write_bytes, atomic_write_json
from .extract import pre_logits

log = logging.getLogger(__name__)

DTYPES = {"float32": (np.float32, "F32"), "float16": (np.float16, "F16")}
CHUNK_ROWS = 4096  # rows copied at a time into the final file


def _tail(split: Any, start: int) -> Any:
    """The split from row `start` on, without reading what comes before where the split allows it."""
    if start == 0:
        return split
    if isinstance(split, Split):
        return Split(split.images[start:], split.labels[start:])
    if isinstance(split, FolderStream):
        return FolderStream(split.items[start:], split.channels, split.size, split.workers)
    return None  # shards: read from the start, the first rows skipped


def _row_name(split: Any, name: str, dataset: str, i: int) -> str:
    items = getattr(split, "items", None)
    return str(items[i][0]) if items is not None else f"{dataset}/{name}/{i}"


def embed(model: torch.nn.Module, data: Any, out: str | Path, splits: tuple[str, ...] | None = None,
          batch_size: int = 256, device: str | torch.device = "cpu", dtype: str = "float32",
          progress: bool = True, stop_after_batches: int | None = None) -> dict[str, Any]:
    """Features of `data`'s splits into `out` (see the module docstring); returns what was written.
    `stop_after_batches` stops as a kill would (tests use it)."""
    if dtype not in DTYPES:
        raise MixerlabError(f"--dtype {dtype}: choose float32 or float16")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in (splits or ("train", "val", "test")) if getattr(data, n, None) is not None]
    if not names:
        raise MixerlabError(f"{data.name}: none of the splits {list(splits or ())} exists")
    device = torch.device(device)
    settings = {"splits": names, "dtype": dtype, "dim": int(model.num_features), "batch_size": batch_size,
                "dataset": data.name, "rows_per_split": [len(getattr(data, n)) for n in names]}
    state_path, part, index = out / "embed_state.json", out / "features.part", out / "index.jsonl"
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    if (out / "features.safetensors").is_file() and state is None:
        raise MixerlabError(f"{out}/features.safetensors exists: this folder holds a finished embedding "
                            "(choose another --out, or remove it)")
    if state is not None and state["settings"] != settings:
        raise MixerlabError(f"{out}: holds an unfinished embedding of other settings ({state['settings']}); "
                            "choose another --out or remove it")
    state = state or {"settings": settings, "split": 0, "row": 0, "rows": 0}
    np_dtype = DTYPES[dtype][0]
    row_bytes = settings["dim"] * np.dtype(np_dtype).itemsize
    _cut(part, state["rows"] * row_bytes)
    _cut_lines(index, state["rows"])
    model.eval().to(device)
    batches_done = 0
    with open(part, "ab") as fp, open(index, "a") as fi, torch.no_grad():
        for s in range(state["split"], len(names)):
            name, split = names[s], getattr(data, names[s])
            start = state["row"] if s == state["split"] else 0
            view, skip = _tail(split, start), 0
            if view is None:
                view, skip = split, start
            bar = tqdm(total=len(split), initial=start, desc=f"embed {name}", disable=not progress, leave=False)
            for ids, images, labels, errors in view.eval_batches(model.config, batch_size):
                first = int(ids[0]) if len(ids) else 0
                if skip and first < skip:
                    continue
                for e in errors:
                    log.warning("skipped: %s", e)
                if len(images):
                    f = pre_logits(model, images, device)
                    fp.write(f.float().cpu().numpy().astype(np_dtype).tobytes())
                    offset = 0 if skip else start
                    fi.write("".join(json.dumps({"path": _row_name(split, name, data.name, int(i) + offset),
                                                 "label": int(y), "split": name}) + "\n"
                                     for i, y in zip(ids, labels)))
                    state["rows"] += len(images)
                fp.flush()
                fi.flush()
                os.fsync(fp.fileno())
                os.fsync(fi.fileno())
                state.update(split=s, row=(int(ids[-1]) + (0 if skip else start) + 1) if len(ids) else start)
                atomic_write_json(state_path, state)
                bar.update(len(ids) + len(errors))
                batches_done += 1
                if stop_after_batches is not None and batches_done >= stop_after_batches:
                    return {"stopped": True, "rows": state["rows"]}
            bar.close()
            state.update(split=s + 1, row=0)
            atomic_write_json(state_path, state)
    result = _assemble(out, settings, state["rows"], np_dtype)
    state_path.unlink()
    part.unlink()
    return result


def _cut(path: Path, size: int) -> None:
    if path.exists():
        with open(path, "r+b") as f:
            f.truncate(size)


def _cut_lines(path: Path, n: int) -> None:
    if not path.exists():
        return
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)[:n]
    atomic_write_bytes(path, b"".join(lines))


def _assemble(out: Path, settings: dict[str, Any], n: int, np_dtype) -> dict[str, Any]:
    """features.safetensors from the part file and the index, copied in chunks (bounded memory)."""
    names, d = settings["splits"], settings["dim"]
    labels = np.empty(n, np.int64)
    split = np.empty(n, np.int8)
    with open(out / "index.jsonl") as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            labels[i], split[i] = row["label"], names.index(row["split"])
    tag = DTYPES[settings["dtype"]][1]
    fbytes = n * d * np.dtype(np_dtype).itemsize
    header = {"labels": {"dtype": "I64", "shape": [n], "data_offsets": [0, 8 * n]},
              "split": {"dtype": "I8", "shape": [n], "data_offsets": [8 * n, 9 * n]},
              "features": {"dtype": tag, "shape": [n, d], "data_offsets": [9 * n, 9 * n + fbytes]},
              "__metadata__": {"splits": json.dumps(names), "dataset": settings["dataset"], "format": "mixerlab-embed"}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    tmp = out / "features.safetensors.tmp"
    with open(tmp, "wb") as w, open(out / "features.part", "rb") as r:
        w.write(struct.pack("<Q", len(text)) + text + labels.tobytes() + split.tobytes())
        while chunk := r.read(CHUNK_ROWS * d * np.dtype(np_dtype).itemsize):
            w.write(chunk)
        w.flush()
        os.fsync(w.fileno())
    os.replace(tmp, out / "features.safetensors")
    return {"rows": n, "dim": d, "splits": names, "file": str(out / "features.safetensors")}


def read_embedding(folder: str | Path) -> dict[str, Any]:
    """{"features", "labels", "split"} numpy arrays and the split names of a finished embedding."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = Path(folder) / "features.safetensors" if Path(folder).is_dir() else Path(folder)
    with safe_open(str(path), "np") as f:
        meta = f.metadata() or {}
    arrays = load_file(str(path))
    return {**arrays, "splits": json.loads(meta.get("splits", "[]"))}
