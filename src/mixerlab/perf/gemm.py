"""The GEMM rate of each backend this machine has: the limit a model's speed is measured against.

On a CPU, the same fp32 matrix product runs at very different rates through torch's default path
(MKL), through oneDNN with a prepacked weight (`torch.utils.mkldnn`, what `to_mkldnn` gives a Linear)
and through ONNX Runtime's MLAS; which is fastest depends on the CPU (docs/benchmarks.md), so it is
measured, never assumed. In bf16, torch's path is already oneDNN.
"""

from __future__ import annotations

from typing import Any

import torch

from .timing import time_call

# The GEMMs of Mixer-B/16 at batch 32 (tokens x channels by channels x hidden) and a square one.
SHAPES = ((6272, 768, 3072), (6272, 3072, 768), (2048, 2048, 2048))


def mm_seconds(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device) -> float:
    """Seconds of one (m x k) @ (k x n) product through torch.mm, the output preallocated: the GEMM alone."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    c = torch.empty(m, n, device=device, dtype=dtype)
    return time_call(lambda: torch.mm(a, b, out=c), device, warmup=2, iters=3, repeats=3)


def _torch_rate(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device) -> float:
    return 2 * m * k * n / mm_seconds(m, k, n, dtype, device)


def prepacked(linear: torch.nn.Linear) -> torch.nn.Module:
    """`linear` in fp32 through oneDNN with its weight prepacked once (`torch.utils.mkldnn.MkldnnLinear`)."""
    import warnings

    with warnings.catch_warnings():  # MkldnnLinear is declared with a TorchScript API torch now deprecates
        warnings.simplefilter("ignore", FutureWarning)
        from torch.utils.mkldnn import MkldnnLinear

        return MkldnnLinear(linear, torch.float32)


def _onednn_rate(m: int, k: int, n: int) -> float | None:
    """fp32 through oneDNN with the weight prepacked, as `torch.utils.mkldnn.to_mkldnn` runs a Linear."""
    if not torch.backends.mkldnn.is_available():
        return None
    lin = prepacked(torch.nn.Linear(k, n, bias=False))
    x = torch.randn(m, k)
    with torch.no_grad():
        return 2 * m * k * n / time_call(lambda: lin(x), torch.device("cpu"), warmup=2, iters=3, repeats=3)


def _onnxruntime_rate(m: int, k: int, n: int) -> float | None:
    """fp32 through ONNX Runtime (MLAS): a one-node MatMul graph with a constant weight."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    w = numpy_helper.from_array(np.random.randn(k, n).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.randn(m, k).astype(np.float32)
    return 2 * m * k * n / time_call(lambda: sess.run(None, {"x": x}), torch.device("cpu"), warmup=2, iters=3,
                                     repeats=3)


def gemm_rates(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
               shapes: tuple[tuple[int, int, int], ...] = SHAPES) -> dict[str, Any]:
    """GFLOP/s of each backend on each shape, each backend's best, and the best of all: the limit."""
    device = torch.device(device)
    backends: dict[str, Any] = {"torch": lambda m, k, n: _torch_rate(m, k, n, dtype, device)}
    if device.type == "cpu" and dtype == torch.float32:
        backends.update(onednn=_onednn_rate, onnxruntime=_onnxruntime_rate)
    rows, best = [], {}
    for name, rate_of in backends.items():
        for m, k, n in shapes:
            rate = rate_of(m, k, n)
            if rate is None:
                break
            rows.append({"backend": name, "shape": [m, k, n], "gflops": rate / 1e9})
            best[name] = max(best.get(name, 0.0), rate / 1e9)
    top = max(best, key=best.get)
    return {"dtype": str(dtype).replace("torch.", ""), "best_gflops": best[top], "best_backend": top,
            "backends": best, "shapes": rows}


_ONEDNN_ISA: str | None = None


def onednn_kernels(dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """Which ISA oneDNN runs on and which kernels it picks for a Linear in `dtype`, from its own verbose
    output (`torch.backends.mkldnn.verbose`), captured at the file-descriptor level since oneDNN prints
    from C: {"isa": "Intel AVX2" or "... Intel AMX ...", "kernels": ["brg_matmul:avx512_core_amx", ...],
    "amx_used": bool}. Empty when oneDNN ran nothing (fp32 Linear through MKL, bf16 emulated)."""
    import os
    import re
    import sys
    import tempfile

    if not torch.backends.mkldnn.is_available():
        return {"isa": None, "kernels": [], "amx_used": False}
    x = torch.randn(64, 256)
    if dtype == torch.float32:  # torch's own fp32 path is MKL; the prepacked Linear is oneDNN's
        lin = prepacked(torch.nn.Linear(256, 256))
    else:
        lin, x = torch.nn.Linear(256, 256).to(dtype), x.to(dtype)
    with tempfile.TemporaryFile() as f:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(f.fileno(), 1)
        try:
            with torch.no_grad(), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                lin(x)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        text = f.read().decode(errors="replace")
    global _ONEDNN_ISA
    isa = next((m.group(1).strip() for m in re.finditer(r"onednn_verbose,(?:v1,)?info,cpu,isa:(.*)", text)), None)
    _ONEDNN_ISA = isa = isa or _ONEDNN_ISA  # oneDNN prints its header once per process
    rows = [[c for c in line.split(",") if c != "v1"] for line in text.splitlines()]  # "v1": oneDNN >= 3.5
    kernels = sorted({r[5] for r in rows if len(r) > 5 and r[0] == "onednn_verbose" and r[1] == "primitive"
                      and r[4] in ("matmul", "inner_product")})
    return {"isa": isa, "kernels": kernels, "amx_used": any("amx" in k for k in kernels)}
