"""Exported files as models: an `.onnx` file (ONNX Runtime) or a `.pt2` package (AOTInductor) behind
the same small interface as a PyTorch model (`config`, `class_names`, `num_classes`, `eval()`, a call
that returns logits), so `mixerlab eval` and `mixerlab predict` check an export on real data with the
same code and the same JSON output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..models.config import config_from_dict
from .onnx import ExportError, read_metadata, require

EXPORT_SUFFIXES = (".onnx", ".pt2")


class ExportedModel(nn.Module):
    """An exported model; `backend` is "onnxruntime" or "aoti"."""

    def __init__(self, path: Path, meta: dict[str, Any], run: Any, backend: str):
        super().__init__()
        self.path, self.meta, self._run, self.backend = path, meta, run, backend
        self.config = config_from_dict(meta["mixerlab_config"])
        self.num_classes = self.config.num_classes
        self.class_names: list[str] | None = list(meta["class_names"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs on the CPU (both runtimes are built for it here); the logits go back to x's device."""
        return self._run(x.detach().float().cpu().contiguous()).to(x.device)


def _onnx_runner(path: Path, threads: int | None) -> Any:
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(sess.run(None, {name: x.numpy()})[0]))

    return run


def load_exported(path: str | os.PathLike, threads: int | None = None) -> ExportedModel:
    """An `.onnx` or `.pt2` file written by `mixerlab export`, ready to call on float32 batches."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if path.suffix == ".onnx":
        meta = read_metadata(path)
        if "mixerlab_config" not in meta:
            raise ExportError(f"{path}: an ONNX file without mixerlab metadata (not written by mixerlab export)")
        return ExportedModel(path, meta, _onnx_runner(path, threads), "onnxruntime")
    if path.suffix == ".pt2":
        from .aoti import read_pt2_metadata

        runner = torch._inductor.aoti_load_package(str(path))
        return ExportedModel(path, read_pt2_metadata(path), lambda x: runner(x), "aoti")
    raise ExportError(f"{path}: not an exported model (expected {' or '.join(EXPORT_SUFFIXES)})")


def is_exported(src: str | os.PathLike) -> bool:
    return Path(src).suffix in EXPORT_SUFFIXES and Path(src).is_file()
