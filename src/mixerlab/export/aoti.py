"""A compiled artefact that runs without the model's Python code: `torch.export` then AOTInductor.

The program is exported with a dynamic batch axis, compiled ahead of time into a shared library
(C++ for CPUs, with the GEMMs going to the same backends torch uses) and packaged as one `.pt2` file,
which `torch._inductor.aoti_load_package` (or the C++ `AOTIModelPackageLoader`) runs without mixerlab
or the model's classes. The metadata travels inside the package as `mixerlab/metadata.json`. Compiling
needs a C++ compiler; where there is none, or the installed torch cannot compile for the device, the
error says so.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..io_utils import atomic_write
from .onnx import CHECK_BATCH, FP32_TOLERANCE, ExportError, example_input, metadata

log = logging.getLogger(__name__)

METADATA_ENTRY = "mixerlab/metadata.json"


def export_pt2(model: nn.Module, out: str | os.PathLike, source: str) -> dict[str, Any]:
    """Write `out` (.pt2): the compiled model with its metadata, checked against eager on a batch of 7."""
    out = Path(out)
    if out.suffix != ".pt2":
        raise ExportError(f"{out}: an AOTInductor package is written to a .pt2 file")
    model = model.float().eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        program = torch.export.export(model, (example_input(model, 2),), dynamic_shapes=({0: batch},))
    except Exception as e:
        raise ExportError(f"torch.export cannot capture this model ({type(e).__name__}: {str(e)[:300]})") from None
    report: dict[str, Any] = {"path": str(out), "format": "pt2", "dtype": "fp32"}

    def write(tmp: str) -> None:
        with tempfile.TemporaryDirectory() as work:
            pkg = str(Path(work) / "model.pt2")
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=pkg)
            except Exception as e:  # no C++ compiler, an unsupported device or platform
                raise ExportError(f"AOTInductor cannot compile this model here ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}); a C++ "
                                  f"compiler (g++ or clang) and torch >= 2.6 are needed") from None
            with zipfile.ZipFile(pkg, "a") as z:
                z.writestr(METADATA_ENTRY, json.dumps(metadata(model, source)))
            Path(tmp).write_bytes(Path(pkg).read_bytes())
        report["max_abs_logit_error"] = check_pt2(Path(tmp), model)
        if report["max_abs_logit_error"] > FP32_TOLERANCE:
            raise ExportError(f"the compiled model differs from eager by {report['max_abs_logit_error']:.2e}")

    atomic_write(out, write)
    log.info("wrote %s: compiled vs eager on a batch of %d: max abs logit error %.2e", out, CHECK_BATCH,
             report["max_abs_logit_error"])
    return report


def check_pt2(path: Path, model: nn.Module) -> float:
    runner = torch._inductor.aoti_load_package(str(path))
    x = example_input(model, CHECK_BATCH)
    with torch.no_grad():
        return float((runner(x) - model(x)).abs().max())


def read_pt2_metadata(path: str | os.PathLike) -> dict[str, Any]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        entry = next((n for n in names if n.endswith(METADATA_ENTRY)), None)
        if entry is None:
            raise ExportError(f"{path}: a .pt2 package without mixerlab metadata (not written by mixerlab export)")
        meta = json.loads(z.read(entry))
    for k in ("class_names", "preprocess", "mixerlab_config"):
        meta[k] = json.loads(meta[k])
    return meta
