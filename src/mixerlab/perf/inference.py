"""The fastest inference callable for a model on its device.

Why each step (the measurements are in docs/benchmarks.md):
- bf16: casting the weights to bf16 once beats `torch.autocast`, which re-casts every weight on every
  call; LayerNorm and softmax keep fp32 accumulation inside the bf16 kernels.
- torch.compile with Inductor's freezing folds the weights as constants, so oneDNN can pre-pack them
  and fuse bias and GELU into the GEMMs. It costs a compile (tens of seconds for B/16 on 2 cores); pass
  `compile=False` to skip it and keep the eager speed-ups.
- In fp32 Inductor packs a Linear for MKL when the batch size is fixed and for oneDNN when it is
  symbolic, and oneDNN's prepacked fp32 GEMM can run at twice MKL's rate (gemm.py measures both). So
  the fp32 compile on a CPU is dynamic in the batch, and token mixing runs as Linear layers over the
  transposed activations (`TokenMlp.rows`), so that its products take the same path.
- The compiled and the eager forward are then timed on the example and the faster is kept: which one
  wins depends on the CPU and the precision.
- glibc malloc is told to keep freed pages (allocator.py): a fresh mmap per activation costs page
  faults on every call.
- fp32 on a CPU: the GEMMs run at very different rates through MKL (torch's default), oneDNN with
  prepacked weights, ONNX Runtime's MLAS and OpenVINO's CPU plugin (which fuses LayerNorm, GELU and the
  adds into its own kernels), and which is fastest depends on the CPU (gemm.py). Each available path
  is built, checked against eager (1e-4 of the logits' scale) and timed; the fastest is kept. In bf16
  on a CPU with native bf16, OpenVINO with its bf16 hint is one more candidate.
- fp32 compiled both ways: symbolic in the batch for oneDNN (above), and fixed to the example's batch
  in the model's own layout, where Inductor packs the weights for MKL; which is faster depends on the
  CPU.
- bf16 and the official tanh GELU: the erf GELU differs from it by at most 4.7e-4, under an eighth of
  bf16's rounding error at 1 (3.9e-3), and oneDNN and ATen evaluate erf several times faster than tanh
  on some CPUs (and fuse it into the Linear before it). So in bf16 the model with its GELUs in the erf
  form is one more candidate, eager and compiled, checked against the tanh model like the others and
  named in `.optimizations` when kept. fp32 always keeps the tanh GELU: there the difference is above
  the 1e-4 its candidates are held to.
"""

from __future__ import annotations

import copy
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .allocator import tune_cpu_allocator
from .gelu import ERF, gelu_as_erf
from .gemm import prepacked
from .runtime import native_bf16
from .timing import UNSTEADY, spread, time_interleaved

log = logging.getLogger(__name__)


class InferenceModel(nn.Module):
    """Wraps the optimised model: takes float32 input in any dtype, returns float32 logits."""

    def __init__(self, model: nn.Module, fn: Any, dtype: torch.dtype, optimizations: list[str],
                 compile_time_s: float):
        super().__init__()
        self.model = model
        self._fn = fn
        self.dtype = dtype
        self.optimizations = optimizations  # what was applied, in words
        self.compile_time_s = compile_time_s
        self.config = model.config

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(as_input(x, self.dtype)).float()


@torch.inference_mode()
def as_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The one form every candidate is built, checked and called with: a copy made in inference
    mode. torch.compile guards on it, and a caller's ordinary tensor differs from an inference tensor
    (its dispatch keys), which would recompile the model on the first call."""
    return x.to(dtype, copy=True)


def optimize_for_inference(
    model: nn.Module,
    dtype: torch.dtype = torch.float32,
    compile: bool = True,
    example: torch.Tensor | None = None,
    backends: tuple[str, ...] = ("onednn", "onnxruntime", "openvino"),
    calibration: torch.Tensor | None = None,
    min_agreement: float = 0.99,
) -> InferenceModel:
    """Return a fast, frozen copy of `model` for inference in `dtype` (float32, bfloat16 or int8).

    Candidates: eager; in fp32 on a CPU also oneDNN with prepacked weights, ONNX Runtime (where the
    export extra is installed) and OpenVINO (the openvino extra), as `backends` allows; in bf16 on a
    CPU with native bf16, OpenVINO's bf16; in bf16, the model with its tanh GELUs in the erf form
    (within bf16's rounding: module docstring); with `compile=True`, torch.compile with freezing (in
    fp32 on a CPU two ways). Each is checked against eager and timed on `example` (default: one random
    image; give your batch size: the compiled candidates are specialised to it, but for one of the
    fp32 ones on a CPU, which takes any batch; another batch size recompiles a specialised one once),
    and the fastest is kept; `.optimizations` says which and by how much, `.compile_time_s` what
    building the candidates cost. The original model is left untouched.

    int8 (CPU): `calibration` is a batch of real inputs (normalised, as the model takes them; 16 or
    more): ONNX Runtime dynamic and static and OpenVINO NNCF int8 are built on its first half, and the
    fastest whose top-1 agrees with the fp32 model on the other half at least `min_agreement` of the
    time is kept (int8.py); ValueError when none does.
    """
    if dtype not in (torch.float32, torch.bfloat16, torch.int8):
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.int8, got {dtype}")
    m = copy.deepcopy(model).eval().requires_grad_(False)
    if dtype == torch.int8:
        return _int8(m, calibration, example, min_agreement)
    optimizations = ["eval", "no-grad inference mode"]
    device = next(m.parameters()).device
    if device.type == "cpu" and tune_cpu_allocator():
        optimizations.append("malloc keeps freed pages")
    if dtype == torch.bfloat16:
        m = m.to(torch.bfloat16)
        optimizations.append("weights cast to bf16 once")
    if example is None:
        h, w = m.config.img_size
        example = torch.randn(1, m.config.in_chans, h, w)
    example = as_input(example.to(device), dtype)
    t = time.perf_counter()
    candidates = {"eager": m}
    cpu_fp32 = dtype == torch.float32 and device.type == "cpu"
    if cpu_fp32:
        candidates.update(_cpu_fp32_candidates(m, backends))
    elif device.type == "cpu" and "openvino" in backends and native_bf16(device):
        candidates.update({f"{RUNTIME_NAMES[r]} (bf16 hint)": model
                           for r, model in exported_candidates(m, ("openvino",), precision="bf16").items()})
    erf = gelu_as_erf(m) if dtype == torch.bfloat16 else None
    if erf is not None:
        candidates[f"eager, {ERF}"] = erf
    if compile:
        for name, variant, dynamic in _compile_plans(m, erf is not None, cpu_fp32):
            compiled = _compiled(variant, example, dynamic=dynamic)
            if compiled is not None:
                candidates[name] = compiled
    build_time = time.perf_counter() - t
    fn, note = _fastest(candidates, example, device, dtype)
    optimizations.append(note)
    return InferenceModel(m, fn, dtype, optimizations, build_time)


def _int8(m: nn.Module, calibration: torch.Tensor | None, example: torch.Tensor | None, min_agreement: float
          ) -> InferenceModel:
    from .int8 import choose_int8

    if calibration is None:
        raise ValueError("int8 needs calibration=: a batch of 16 or more real inputs, normalised as the model "
                         "takes them")
    if next(m.parameters()).device.type != "cpu":
        raise ValueError("int8 runs on the CPU (ONNX Runtime, OpenVINO); move the model to the CPU first")
    optimizations = ["eval", "no-grad inference mode"]
    if tune_cpu_allocator():
        optimizations.append("malloc keeps freed pages")
    t = time.perf_counter()
    example = calibration[:1] if example is None else example
    fn, note = choose_int8(m.float(), calibration, example, min_agreement)
    optimizations.append(note)
    return InferenceModel(m, fn, torch.float32, optimizations, time.perf_counter() - t)  # int8 inside, fp32 in and out


def _cpu_fp32_candidates(m: nn.Module, backends: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "onednn" in backends and torch.backends.mkldnn.is_available():
        out["oneDNN, prepacked weights"] = to_onednn(m)
    exported = exported_candidates(m, tuple(b for b in backends if b in RUNTIME_NAMES))
    out.update({RUNTIME_NAMES[r]: model for r, model in exported.items()})
    return out


def to_onednn(model: nn.Module) -> nn.Module:
    """A copy whose Linear layers run through oneDNN with their weights prepacked once. Token mixing
    multiplies by its weights from the left (`TokenMlp`), which oneDNN's linear does not do: it keeps
    torch's path (an eighth of B/16's GEMM FLOPs)."""
    from ..models.mixer import TokenMlp

    m = copy.deepcopy(model)
    for parent in list(m.modules()):
        if isinstance(parent, TokenMlp):
            continue
        for name, child in parent.named_children():
            if type(child) is nn.Linear:
                setattr(parent, name, prepacked(child))
    return m


RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}  # as .optimizations names them


def exported_candidates(m: nn.Module, runtimes: tuple[str, ...], precision: str = "f32") -> dict[str, Any]:
    """The model exported to ONNX once and loaded in each of `runtimes` ("onnxruntime", "openvino":
    converted from the same file), keyed by runtime; a runtime whose extra is not installed, or whose
    export fails, is left out and said in the log."""
    out: dict[str, Any] = {}
    if not runtimes:
        return out
    try:
        from ..export.onnx import export_onnx
        from ..export.runtime import load_exported
    except ImportError:
        return out
    fp32 = copy.deepcopy(m).float()  # the exporters cast their model in place; `m` may be bf16
    with tempfile.TemporaryDirectory(prefix="mixerlab-exported-") as folder:
        onnx_file = Path(folder) / "model.onnx"
        try:
            export_onnx(fp32, onnx_file, "optimize_for_inference")
        except Exception as e:  # noqa: BLE001 - a missing package or an export failure: the others remain
            log.info("exported candidates unavailable: %s: %s", type(e).__name__, str(e)[:200])
            return out
        for runtime in runtimes:
            try:
                path = onnx_file
                if runtime == "openvino":
                    from ..export.openvino import export_openvino

                    path = Path(folder) / "model.xml"
                    export_openvino(fp32, path, "optimize_for_inference", onnx_file=onnx_file)
                out[runtime] = load_exported(path, precision=precision)  # held in memory once loaded
            except Exception as e:  # noqa: BLE001 - as above, for this runtime alone
                log.info("%s candidate unavailable: %s: %s", runtime, type(e).__name__, str(e)[:200])
    return out


def token_mixing_as_rows(model: nn.Module) -> nn.Module:
    """A copy whose token-mixing MLPs run as Linear layers over (B*C, S) rows (same weights, same
    values up to rounding): the form Inductor gives to oneDNN."""
    from ..models.mixer import TokenMlp

    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, TokenMlp):
            mod.rows = True
    return m


def _compile_plans(m: nn.Module, erf: bool, cpu_fp32: bool) -> list[tuple[str, nn.Module, bool]]:
    """(name, model, dynamic) of each compiled candidate (the module docstring says why each)."""
    plans = [("torch.compile (Inductor, freezing)", m, False)]
    if cpu_fp32:
        plans.insert(0, ("torch.compile (Inductor, freezing; oneDNN, token mixing as rows)", token_mixing_as_rows(m),
                         True))
    if erf:
        plans.append((f"torch.compile (Inductor, freezing; {ERF})", gelu_as_erf(m, opaque_token_gelu=True), False))
    return plans


def _compiled(m: nn.Module, example: torch.Tensor, dynamic: bool = False) -> Any:
    try:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(m, dynamic=dynamic)
        with torch.inference_mode():
            compiled(example)
        return compiled
    except Exception as e:  # a missing C++ compiler, an unsupported platform
        log.warning("torch.compile unavailable (%s: %s); using eager", type(e).__name__, str(e)[:200])
        return None


def _fastest(candidates: dict[str, Any], example: torch.Tensor, device: torch.device, dtype: torch.dtype
             ) -> tuple[Any, str]:
    """The fastest candidate whose output agrees with eager's; a note with every time."""
    with torch.inference_mode():
        ref = candidates["eager"](example).float()
        scale = ref.abs().max().clamp_min(1e-6)
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        usable = {}
        for name, fn in candidates.items():
            err = ((fn(example).float() - ref).abs().max() / scale).item()
            if err > tol:
                log.warning("%s differs from eager by %.1e of the logits' scale; not used", name, err)
                continue
            usable[name] = lambda f=fn: f(example)
        samples = time_interleaved(usable, device, rounds=3)
        if spread(samples["eager"]) > UNSTEADY:  # a baseline that collapsed under other jobs' load: once more
            samples = time_interleaved(usable, device, rounds=5, warmup=0)
    times = {n: statistics.median(s) for n, s in samples.items()}
    best = min(times, key=times.get)
    others = ", ".join(f"{n} {times['eager'] / t:.2f}x" for n, t in times.items() if n not in (best, "eager"))
    note = f"{best}: {times['eager'] / times[best]:.2f}x eager" + (f" (also measured: {others})" if others else "")
    worst = max(spread(s) for s in samples.values())
    if worst > UNSTEADY and len(samples) > 1:  # a lone candidate has no speed-up to be wrong about
        from .threads import load_average, load_phrase, usable_cores

        why = (f"unreliable: a time varied {worst:.1f}x between rounds, {load_phrase(load_average(), usable_cores())}; "
               "other jobs were likely using the cores")
        log.warning("optimize_for_inference: %s: %s", note, why)
        note += f" ({why})"
    return candidates[best], note
