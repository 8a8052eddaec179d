"""Exported files as models: an `.onnx` file (ONNX Runtime), an OpenVINO `.xml` (with its `.bin`) or a
`.pt2` package (AOTInductor) behind
the same small interface as a PyTorch model (`config`, `class_names`, `num_classes`, `eval()`, a call
that returns logits), so `mixerlab eval` and `mixerlab predict` check an export on real data with the
same code and the same JSON output.

An ONNX file or an OpenVINO IR is data: the runtime interprets its graph and runs nothing from the
file. A `.pt2` is a
shared library that the loader dlopens, so loading one runs its code, the code of whoever made it: it
is loaded only when the caller says so (`trust_compiled=True`, `--trust-compiled`). The metadata a
file carries is checked against the graph it describes before it is used, since it can be edited.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError
from ..models.config import class_names_problem, config_from_dict
from .onnx import ExportError, read_metadata, require

EXPORT_SUFFIXES = (".onnx", ".xml", ".pt2")
TRUST_HINT = ("a .pt2 package is native code that runs as soon as it is loaded; load it only if you made it "
              "or trust who did: pass --trust-compiled (trust_compiled=True in Python), or export to .onnx or "
              ".xml (OpenVINO), which run no code from the file")


class ExportedModel(nn.Module):
    """An exported model; `backend` is "onnx" (run by ONNX Runtime; serve --backend onnx), "openvino"
    (an .xml) or "aoti" (a .pt2)."""

    def __init__(self, path: Path, meta: dict[str, Any], run: Any, backend: str, precision: str = "f32"):
        super().__init__()
        self.path, self.meta, self._run, self.backend = path, meta, run, backend
        self.precision = precision  # OpenVINO's hint for an .xml; the others run as exported
        self.config = meta["config"]
        self.num_classes = self.config.num_classes
        self.class_names: list[str] | None = meta["class_names"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs on the CPU (both runtimes are built for it here); the logits go back to x's device."""
        return self._run(x.detach().float().cpu().contiguous()).to(x.device)


def checked_metadata(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata with `config` built and `class_names` checked; one ExportError naming the key."""
    if "mixerlab_config" not in meta:
        raise ExportError(f"{path}: an exported file without mixerlab metadata (not written by mixerlab export)")
    try:
        if not isinstance(meta["mixerlab_config"], dict):
            raise ConfigError(f"{meta['mixerlab_config']!r} is not a mapping")
        cfg = config_from_dict(meta["mixerlab_config"])
    except (ConfigError, TypeError, ValueError) as e:
        raise ExportError(f"{path}: metadata key 'mixerlab_config' is not a valid model config: {e}") from None
    names = meta.get("class_names")
    problem = class_names_problem(names, cfg.num_classes)
    if problem:
        raise ExportError(f"{path}: metadata key {problem}")
    return {**meta, "config": cfg, "class_names": names}


def _check_io(path: Path, cfg, input_shape: list, output_shape: list) -> None:
    """The graph's own input (C, H, W) and output width against what the metadata claims."""
    want_in = [cfg.in_chans, *cfg.img_size]
    got_in = [d if isinstance(d, int) else None for d in input_shape[1:]]
    if len(got_in) != 3 or any(g is not None and g != w for g, w in zip(got_in, want_in)):
        raise ExportError(f"{path}: the metadata says input {want_in} (in_chans, height, width), the graph "
                          f"takes {input_shape[1:]}: the file was edited or is not what it claims")
    out = output_shape[-1] if output_shape else None
    width = cfg.num_classes or getattr(cfg, "embed_dim", None)
    if isinstance(out, int) and out != width:
        raise ExportError(f"{path}: the metadata says {width} outputs, the graph gives {out}")


def _onnx_runner(path: Path, threads: int | None) -> tuple[Any, list, list]:
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime raises its own types for a broken graph
        raise ExportError(f"{path}: ONNX Runtime cannot load this graph: {str(e).splitlines()[0][:300]}") from None
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(sess.run(None, {name: x.numpy()})[0]))

    return run, list(sess.get_inputs()[0].shape), list(sess.get_outputs()[0].shape)


def _dims(port: Any) -> list:
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


def _openvino_runner(path: Path, ov_model: Any, threads: int | None, precision: str) -> Any:
    from .openvino import compile_ir

    try:
        compiled = compile_ir(ov_model, threads, precision)
    except ExportError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ExportError(f"{path}: OpenVINO cannot compile this IR for the CPU: {first}") from None

    def run(x: torch.Tensor) -> torch.Tensor:
        request = compiled.create_infer_request()  # one per call: a request is not safe to share across threads
        request.infer({0: x.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run


def _pt2_runner(path: Path) -> Any:
    """Load a .pt2 with its extracted files in a folder of our own, removed when the model goes (or at
    once when the load fails): torch's loader leaves an aotinductor_* folder in the temp dir otherwise."""
    work = tempfile.mkdtemp(prefix="mixerlab-pt2-")
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = work  # the C++ loader extracts under $TMPDIR
    try:
        runner = torch._inductor.aoti_load_package(str(path))
    except Exception as e:
        shutil.rmtree(work, ignore_errors=True)
        raise ExportError(f"{path}: not a loadable AOTInductor package: {str(e).strip().splitlines()[0][:300]}"
                          if str(e).strip() else f"{path}: not a loadable AOTInductor package") from None
    finally:
        if old is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old
    weakref.finalize(runner, shutil.rmtree, work, True)
    return runner


def load_exported(path: str | os.PathLike, threads: int | None = None, trust_compiled: bool = False,
                  precision: str = "f32") -> ExportedModel:
    """An `.onnx`, `.xml` (OpenVINO) or `.pt2` file written by `mixerlab export`, ready to call on
    float32 batches. A `.pt2` runs native code when loaded, so it needs `trust_compiled=True`.
    `precision` is OpenVINO's ("f32", or "bf16" where the CPU has it); the others run as exported."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if path.suffix == ".onnx":
        meta = checked_metadata(path, _read(read_metadata, path))
        run, ins, outs = _onnx_runner(path, threads)
        _check_io(path, meta["config"], ins, outs)
        return ExportedModel(path, meta, run, "onnx")
    if path.suffix == ".xml":
        from .openvino import read_ir

        ov_model, meta = read_ir(path)
        meta = checked_metadata(path, meta)
        _check_io(path, meta["config"], _dims(ov_model.input(0)), _dims(ov_model.output(0)))
        return ExportedModel(path, meta, _openvino_runner(path, ov_model, threads, precision), "openvino", precision)
    if path.suffix == ".pt2":
        from .aoti import read_pt2_metadata

        meta = checked_metadata(path, _read(read_pt2_metadata, path))  # the zip's JSON: read, never run
        if not trust_compiled:
            raise ExportError(f"{path}: refused to load: {TRUST_HINT}")
        runner = _pt2_runner(path)
        cfg = meta["config"]
        try:
            with torch.no_grad():
                out = runner(torch.zeros(1, cfg.in_chans, *cfg.img_size))
        except Exception as e:
            raise ExportError(f"{path}: the package does not take the input its metadata describes "
                              f"({[cfg.in_chans, *cfg.img_size]}): {str(e).strip()[:200]}") from None
        _check_io(path, cfg, [1, cfg.in_chans, *cfg.img_size], list(out.shape))
        model = ExportedModel(path, meta, lambda x: runner(x), "aoti")
        model._runner = runner  # keeps the extracted files alive as long as the model
        return model
    raise ExportError(f"{path}: not an exported model (expected {' or '.join(EXPORT_SUFFIXES)})")


def _read(reader, path: Path) -> dict[str, Any]:
    try:
        return reader(path)
    except ExportError:
        raise
    except Exception as e:  # a broken protobuf, zip or JSON: say which file
        raise ExportError(f"{path}: cannot read its metadata ({type(e).__name__}: {str(e)[:200]})") from None


def is_exported(src: str | os.PathLike) -> bool:
    return Path(src).suffix in EXPORT_SUFFIXES and Path(src).is_file()
