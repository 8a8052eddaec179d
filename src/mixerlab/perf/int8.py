"""int8 inference chosen by measurement: `optimize_for_inference(model, torch.int8, calibration=...)`.

Which int8 path is fastest depends on the CPU and its int8 units (VNNI, AMX) as much as fp32 does, and
whether a path keeps the model's answers depends on the model, so each available one is built from
one ONNX export, checked and timed, and the fastest that keeps the answers is kept:
- ONNX Runtime, dynamic: int8 weights, activations quantised per batch at run time;
- ONNX Runtime, static: activation ranges calibrated on the first half of the calibration images;
- OpenVINO, NNCF post-training quantisation, calibrated on the same half; on a CPU with native bf16
  the same graph once more with OpenVINO's bf16 hint, so that what NNCF left unquantised (LayerNorm,
  GELU, the adds, dequantisation) runs in bf16 rather than fp32;
- the same with one weight scale a tensor (and its bf16 twin), which OpenVINO folds into token
  mixing's products where per-row scales cost a pass of their own (export/openvino.py); and that
  once more from the model with its tanh GELUs in the erf form (as in bf16, inference.py).
"Keeps the answers": top-1 agreement with the fp32 model on the other half of the images, which
none of them has seen, at least `min_agreement`. No labels are needed; the accuracy on labelled data
is measured by `mixerlab eval` on the exported file (benchmarks/bench_export.py does it on Fashion-MNIST).
"""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .gelu import ERF, gelu_as_erf
from .runtime import native_bf16
from .timing import time_interleaved

log = logging.getLogger(__name__)

MIN_CALIBRATION = 16


def int8_candidates(model: nn.Module, calibration: torch.Tensor) -> dict[str, nn.Module]:
    """Each available int8 path of `model`, calibrated on `calibration` (normalised float32 images),
    loaded and ready to call; a path whose extra is missing or whose build fails is left out (logged)."""
    from ..export.onnx import export_onnx
    from ..export.runtime import load_exported

    out: dict[str, nn.Module] = {}
    batches = [b.numpy() for b in calibration.float().cpu().split(32)]
    model = copy.deepcopy(model).float().eval()  # the exporters cast their model in place
    erf = gelu_as_erf(model)
    with tempfile.TemporaryDirectory(prefix="mixerlab-int8-") as folder:
        fp32 = Path(folder) / "fp32.onnx"
        export_onnx(model, fp32, "optimize_for_inference int8")
        # name: (how, per-tensor weights, model); the erf model as for bf16 (inference.py), since
        # int8's own error is far above the 4.7e-4 between the two GELUs and OpenVINO's int8 runs erf
        # faster where it fuses GELU into token mixing's product
        builds = {"ONNX Runtime int8 dynamic": ("dynamic", False, model),
                  "ONNX Runtime int8 static": ("static", False, model),
                  "OpenVINO int8 (NNCF)": ("openvino", False, model),
                  "OpenVINO int8 (NNCF, per-tensor weights)": ("openvino", True, model)}
        if erf is not None:
            builds[f"OpenVINO int8 (NNCF, per-tensor weights; {ERF})"] = ("openvino", True, erf)
        for i, (name, (how, per_tensor, m)) in enumerate(builds.items()):
            try:
                if how == "openvino":
                    from ..export.openvino import export_openvino

                    source = fp32
                    if m is not model:
                        source = Path(folder) / f"fp32-{i}.onnx"
                        export_onnx(m, source, "optimize_for_inference int8")
                    path = Path(folder) / f"int8-{i}.xml"
                    export_openvino(m, path, "optimize_for_inference int8", int8=True, calibration=batches,
                                    onnx_file=source, per_tensor_weights=per_tensor)
                else:
                    from ..export.quantize import quantize_onnx

                    path = Path(folder) / f"int8-{i}.onnx"
                    quantize_onnx(fp32, path, how, batches if how == "static" else None)
                out[name] = load_exported(path)  # each runtime holds its graph in memory once loaded
                if how == "openvino" and native_bf16(torch.device("cpu")):
                    out[f"{name}, bf16 elsewhere"] = load_exported(path, precision="bf16")
            except Exception as e:  # noqa: BLE001 - a missing extra or a failed build: the others remain
                log.info("%s unavailable: %s: %s", name, type(e).__name__, str(e)[:200])
    return out


@torch.inference_mode()
def choose_int8(model: nn.Module, calibration: torch.Tensor, example: torch.Tensor, min_agreement: float = 0.99
                ) -> tuple[Any, str]:
    """The fastest int8 candidate whose top-1 agrees with `model` on the held-out half of
    `calibration` at least `min_agreement` of the time, with a note of every agreement and speed (as
    ratios to the fp32 eager model). Raises ValueError when none is available or none agrees."""
    if calibration.ndim != 4 or len(calibration) < MIN_CALIBRATION:
        raise ValueError(f"calibration must be a batch of at least {MIN_CALIBRATION} images (N, C, H, W) as the "
                         f"model takes them, got shape {tuple(calibration.shape)}")
    half = (len(calibration) + 1) // 2
    fit, check = calibration[:half], calibration[half:]
    candidates = int8_candidates(model, fit)
    if not candidates:
        raise ValueError("no int8 path is available: install the export extra (ONNX Runtime) or the openvino "
                         "extra (OpenVINO, NNCF)")
    want = model(check.float()).argmax(1)
    agreement = {n: (m(check.float()).argmax(1) == want).float().mean().item() for n, m in candidates.items()}
    kept = {n: m for n, m in candidates.items() if agreement[n] >= min_agreement}
    said = ", ".join(f"{n} {100 * a:.1f}%" for n, a in agreement.items())
    if not kept:
        raise ValueError(f"no int8 path keeps the model's answers: top-1 agreement with fp32 on {len(check)} held-out "
                         f"calibration images: {said} (at least {100 * min_agreement:.1f}% is asked)")
    x = example.float()
    fns = {"fp32 eager": lambda: model(x), **{n: (lambda m=m: m(x)) for n, m in kept.items()}}
    times = {n: statistics.median(s) for n, s in time_interleaved(fns, torch.device("cpu"), rounds=3).items()}
    best = min(kept, key=times.get)
    ratios = ", ".join(f"{n} {times['fp32 eager'] / times[n]:.2f}x" for n in kept if n != best)
    note = (f"{best}: {times['fp32 eager'] / times[best]:.2f}x fp32 eager" + (f" (also measured: {ratios})" if ratios
                                                                               else "")
            + f"; top-1 agreement with fp32 on {len(check)} held-out images: {said}")
    return kept[best], note
