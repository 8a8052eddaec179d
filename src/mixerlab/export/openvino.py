"""OpenVINO IR (`OUT.xml` with its weights in `OUT.bin`): our checked ONNX export converted by
OpenVINO's own converter, with the metadata in the IR's `rt_info`, checked against PyTorch.

Why through ONNX: that graph is already checked against PyTorch and keeps LayerNorm and GELU as single
nodes, which OpenVINO's CPU plugin fuses into its GEMMs. Why the weights are saved in fp32
(`compress_to_fp16=False`, where OpenVINO's default halves them): an export must give the numbers
it was checked with. For the same reason a loaded IR runs with the f32 precision hint: OpenVINO's CPU
plugin otherwise runs f32 graphs in bf16 on CPUs with native bf16 (AMX, AVX512-BF16), so the answers
would depend on the CPU; bf16 is asked for by name (`precision="bf16"`).

int8 (`int8=True`): NNCF's post-training quantisation of the converted graph, calibrated on the user's
images: int8 weights and activations, run by the CPU plugin with VNNI or AMX int8 where the CPU has
them. The accuracy it keeps is measured on real data (`mixerlab eval OUT.xml --data ...`), not assumed.

An IR is data: OpenVINO parses the XML and maps the weights, and runs no code from the files (custom
operations would need an extension library, which is never loaded here).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..io_utils import writable_folder
from .onnx import CHECK_BATCH, FP32_TOLERANCE, ExportError, example_input, export_onnx

log = logging.getLogger(__name__)

RT_KEY = "mixerlab"  # the rt_info section that holds our metadata
PRECISIONS = ("f32", "bf16")


def require_openvino():
    try:
        import openvino
    except ImportError:
        raise ExportError("openvino is not installed; it comes with the openvino extra: "
                          "pip install 'mixerlab[openvino]'") from None
    return openvino


def weights_file(xml: Path) -> Path:
    return xml.with_suffix(".bin")


def compile_ir(model: Any, threads: int | None = None, precision: str = "f32") -> Any:
    """A CPU-compiled OpenVINO model (from an `ov.Model` or an .xml path) in the given precision."""
    ov = require_openvino()
    if precision not in PRECISIONS:
        raise ExportError(f"unknown OpenVINO precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return ov.Core().compile_model(model, "CPU", config)


def _quantize(ov_model: Any, calibration: Iterable[np.ndarray], per_tensor_weights: bool = False) -> Any:
    try:
        import nncf
    except ImportError:
        raise ExportError("int8 OpenVINO export needs NNCF; it comes with the openvino extra: "
                          "pip install 'mixerlab[openvino]'") from None
    # One image an item: NNCF counts its subset in items, and its bias correction assumes batch 1.
    images = [np.ascontiguousarray(b[i:i + 1], dtype=np.float32) for b in calibration for i in range(len(b))]
    if not images:
        raise ExportError("int8 needs calibration images; none were given")
    logging.getLogger("nncf").setLevel(logging.WARNING)  # its per-step INFO lines are for its own debugging
    # Bias correction is off: its statistics assume channels on one axis, and token mixing runs its
    # Linear layers over the transposed table (NNCF fails on it).
    # Per-tensor weight scales: token mixing's product has its weight as the left operand, so OpenVINO
    # runs it as a MatMul, not a FullyConnected, and cannot fold per-row scales into it (a multiply
    # pass of its own); one scale a tensor folds in (docs/benchmarks.md: faster on AMX). Per-channel
    # keeps more accuracy in general, so it stays the default and the choice is measured.
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    weights = QuantizationParameters(per_channel=False) if per_tensor_weights else None
    return nncf.quantize(ov_model, nncf.Dataset(images), subset_size=len(images),
                         advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=True,
                                                                            weights_quantization_params=weights))


def check_ir(path: Path, model: nn.Module) -> float:
    """The IR (f32 hint) against PyTorch on a batch of 7: the max abs logit difference."""
    compiled = compile_ir(str(path))
    x = example_input(model, CHECK_BATCH)
    with torch.no_grad():
        want = model(x).float().numpy()
    return float(abs(compiled(x.numpy())[0] - want).max())


def export_openvino(model: nn.Module, out: str | os.PathLike, source: str, int8: bool = False,
                    calibration: Iterable[np.ndarray] | None = None, onnx_file: str | os.PathLike | None = None,
                    per_tensor_weights: bool = False) -> dict[str, Any]:
    """Write `out` (.xml) and its `.bin` from `model` (fp32, eval), with metadata, checked. Both files
    are written in a temporary folder beside `out` and moved into place, the weights first: a crash
    leaves the old pair or the new one, or at worst new weights beside an old graph, which OpenVINO
    refuses to read (never a half-written file). `onnx_file`: this model's checked export, already
    made (`export_onnx`), to convert instead of exporting again (the export is most of the time).
    `per_tensor_weights`: int8 with one weight scale a tensor instead of one a row (`_quantize`)."""
    ov = require_openvino()
    out = Path(out)
    if out.suffix != ".xml":
        raise ExportError(f"{out}: an OpenVINO export is written to a .xml file (its weights go beside it, "
                          f"in {out.with_suffix('.bin').name})")
    if int8 and calibration is None:
        raise ExportError("int8 OpenVINO export needs calibration images: pass --data (a dataset or image folder)")
    model = model.float().eval()
    writable_folder(out.parent, out)
    report: dict[str, Any] = {"path": str(out), "weights": str(weights_file(out)), "format": "openvino",
                              "dtype": "int8-static" if int8 else "fp32", "openvino_version": ov.__version__}
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as work:
        if onnx_file is None:
            onnx_file = Path(work) / "model.onnx"
            report["fp32_check"] = export_onnx(model, onnx_file, source)
        meta = _onnx_props(Path(onnx_file))  # the metadata as the checked ONNX file carries it
        ov_model = ov.convert_model(str(onnx_file))
        if int8:
            ov_model = _quantize(ov_model, calibration, per_tensor_weights)
            meta["quantization"] = ("int8 static (NNCF post-training, calibrated"
                                    + ("; per-tensor weights)" if per_tensor_weights else ")"))
        for k, v in meta.items():
            ov_model.set_rt_info(v, [RT_KEY, k])
        tmp = Path(work) / "model.xml"
        ov.save_model(ov_model, str(tmp), compress_to_fp16=False)
        err = check_ir(tmp, model)
        if not int8 and err > FP32_TOLERANCE:
            raise ExportError(f"OpenVINO differs from PyTorch by {err:.2e} (allowed {FP32_TOLERANCE:g})")
        report["max_abs_logit_error"] = err
        for f in (weights_file(tmp), tmp):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(weights_file(tmp), weights_file(out))
        os.replace(tmp, out)
    log.info("wrote %s and %s: OpenVINO vs PyTorch on a batch of %d: max abs logit error %.2e", out,
             weights_file(out).name, CHECK_BATCH, err)
    return report


def _onnx_props(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def read_ir(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """The `ov.Model` of an .xml (with its .bin) and the metadata it carries, decoded."""
    ov = require_openvino()
    path = Path(path)
    if not weights_file(path).is_file():
        raise ExportError(f"{path}: its weights file {weights_file(path).name} is missing (an OpenVINO export "
                          f"is the .xml and the .bin beside it)")
    try:
        ov_model = ov.Core().read_model(str(path))
    except Exception as e:  # OpenVINO raises RuntimeError with its own long text for a broken IR
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ExportError(f"{path}: OpenVINO cannot read this IR: {first}") from None
    meta: dict[str, Any] = {}
    if ov_model.has_rt_info([RT_KEY]):
        for k in ov_model.get_rt_info()[RT_KEY].keys():
            meta[k] = ov_model.get_rt_info([RT_KEY, k]).astype(str)
    for k in ("class_names", "preprocess", "mixerlab_config"):
        if k in meta:
            try:
                meta[k] = json.loads(meta[k])
            except json.JSONDecodeError:
                raise ExportError(f"{path}: metadata key {k!r} is not valid JSON") from None
    return ov_model, meta
