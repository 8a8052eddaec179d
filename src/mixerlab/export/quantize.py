"""int8 ONNX: the Linear layers (MatMul and Gemm nodes) quantised with ONNX Runtime's own tools.

A Mixer is almost all Linear layers, which is what int8 GEMMs (VNNI, AMX) accelerate.
- dynamic (the default): int8 weights, activations quantised per batch at run time; no data needed.
- static: activations quantised with ranges measured on a calibration set (`--data`), QDQ format.
Both keep the metadata of the fp32 file. The graph is first pre-processed (shape inference and
folding), as ONNX Runtime's quantisation guide asks.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..io_utils import atomic_write
from .onnx import ExportError, read_metadata, require

log = logging.getLogger(__name__)

MODES = ("dynamic", "static")


class _Batches:
    """ONNX Runtime's CalibrationDataReader over float32 batches."""

    def __init__(self, name: str, batches: Iterable[np.ndarray]):
        self.name, self.it = name, iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.it, None)
        return None if batch is None else {self.name: batch}


def quantize_onnx(fp32: str | os.PathLike, out: str | os.PathLike, mode: str = "dynamic",
                  calibration: Iterable[np.ndarray] | None = None) -> dict[str, Any]:
    """Write the int8 version of the fp32 ONNX file `fp32` to `out`, atomically, keeping its metadata."""
    onnx = require("onnx")
    q = require("onnxruntime.quantization")
    if mode not in MODES:
        raise ExportError(f"unknown int8 mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "static" and calibration is None:
        raise ExportError("static int8 needs calibration images: pass --data (a dataset or image folder)")
    meta = {k: v for k, v in ((p.key, p.value) for p in onnx.load(str(fp32), load_external_data=False).metadata_props)}
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        q.shape_inference.quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        qpath = Path(tmp) / "int8.onnx"
        ops = ["MatMul", "Gemm"]
        if mode == "dynamic":
            q.quantize_dynamic(str(pre), str(qpath), weight_type=q.QuantType.QInt8, op_types_to_quantize=ops)
        else:
            import onnxruntime as ort

            name = ort.InferenceSession(str(pre), providers=["CPUExecutionProvider"]).get_inputs()[0].name
            q.quantize_static(str(pre), str(qpath), _Batches(name, calibration), quant_format=q.QuantFormat.QDQ,
                              op_types_to_quantize=ops, activation_type=q.QuantType.QUInt8,
                              weight_type=q.QuantType.QInt8, per_channel=True)
        proto = onnx.load(str(qpath))
    del proto.metadata_props[:]
    for k, v in {**meta, "quantization": f"int8 {mode} (MatMul, Gemm)"}.items():
        proto.metadata_props.add(key=k, value=v)

    def write(tmp: str) -> None:
        onnx.save(proto, tmp)
        onnx.checker.check_model(tmp, full_check=True)

    atomic_write(out, write)
    log.info("wrote %s (int8 %s)", out, mode)
    return {"path": str(out), "format": "onnx", "dtype": f"int8-{mode}", **read_metadata(out)}
