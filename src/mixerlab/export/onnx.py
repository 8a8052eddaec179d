"""ONNX export: torch's dynamo exporter (`torch.onnx.export(dynamo=True)`), checked after every export.

Why the dynamo path: it is the exporter torch develops (the TorchScript one is deprecated), it
exports `scaled_dot_product_attention` and the token-major reshapes without tracing tricks, and with
opset 20 the graph keeps LayerNorm as one `LayerNormalization` node and the official tanh GELU as one
`Gelu(approximate="tanh")` node. The batch axis is dynamic; height and width are fixed, because the
token-mixing weights are sized for one token grid.

Every file carries the model's metadata in `metadata_props` (class names, preprocessing, the mixerlab
config, the source) and is checked: `onnx.checker` with full checks, then ONNX Runtime against
PyTorch on a batch of 7, which is not the batch the export traced.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import MixerlabError
from ..io_utils import atomic_write
from ..predict import class_names_of

log = logging.getLogger(__name__)

OPSET = 20  # Gelu became an ONNX op in opset 20; LayerNormalization in 17
CHECK_BATCH = 7
FP32_TOLERANCE = 1e-4


class ExportError(MixerlabError):
    """An export that cannot be made or does not match the PyTorch model."""


def require(module: str):
    """Import an optional dependency of the export extra, or say which extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{module} is not installed; it comes with the export extra: "
                          f"pip install 'mixerlab[export]'") from None


def metadata(model: nn.Module, source: str) -> dict[str, str]:
    """What a deployed file needs to be used without mixerlab's Python objects: classes, preprocessing,
    the config, where it came from."""
    cfg = model.config
    names = class_names_of(model)
    preprocess = {**cfg.preprocess(), "pixel_range": "uint8 / 255"}
    return {"class_names": json.dumps(names), "preprocess": json.dumps(preprocess),
            "mixerlab_config": json.dumps(cfg.to_dict(), sort_keys=True), "source": source,
            "mixerlab_version": _version()}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mixerlab")
    except PackageNotFoundError:
        return "unknown"


def example_input(model: nn.Module, batch: int) -> torch.Tensor:
    cfg = model.config
    return torch.randn(batch, cfg.in_chans, *cfg.img_size, generator=torch.Generator().manual_seed(batch))


def _export_program(model: nn.Module, example: torch.Tensor) -> Any:
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        return torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                 opset_version=OPSET, verbose=False)
    except Exception as e:  # the exporter raises many types; the first line says what it could not do
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.onnx cannot export this model ({type(e).__name__}: {first[:300]})") from None


def check_onnx(path: Path, model: nn.Module) -> float:
    """onnx.checker (full) and ONNX Runtime against PyTorch on a batch of 7: the max abs logit error."""
    onnx = require("onnx")
    ort = require("onnxruntime")
    onnx.checker.check_model(str(path), full_check=True)
    x = example_input(model, CHECK_BATCH)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).float().numpy()
    return float(abs(got - want).max())


def export_onnx(model: nn.Module, out: str | os.PathLike, source: str) -> dict[str, Any]:
    """Write `out` (.onnx) from `model` (fp32, eval), with metadata, checked; written atomically."""
    onnx = require("onnx")
    require("onnxscript")
    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"{out}: an ONNX export is written to a .onnx file")
    model = model.float().eval()
    program = _export_program(model, example_input(model, 2))
    proto = program.model_proto
    for k, v in metadata(model, source).items():
        proto.metadata_props.add(key=k, value=v)

    def write(tmp: str) -> None:
        onnx.save(proto, tmp)
        err = check_onnx(Path(tmp), model)
        if err > FP32_TOLERANCE:
            raise ExportError(f"ONNX Runtime differs from PyTorch by {err:.2e} (allowed {FP32_TOLERANCE:g})")
        report["max_abs_logit_error"] = err

    report: dict[str, Any] = {"path": str(out), "format": "onnx", "opset": OPSET, "dtype": "fp32"}
    atomic_write(out, write)
    log.info("wrote %s: onnx.checker passed; ONNX Runtime vs PyTorch on a batch of %d: max abs logit error %.2e",
             out, CHECK_BATCH, report["max_abs_logit_error"])
    return report


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata an export carries, decoded (class_names, preprocess, mixerlab_config, source)."""
    onnx = require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    for k in ("class_names", "preprocess", "mixerlab_config"):
        if k in meta:
            meta[k] = json.loads(meta[k])
    return meta
