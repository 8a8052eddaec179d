"""The fastest inference callable for a model on its device.

Why each step (the measurements are in docs/benchmarks.md):
- bf16: casting the weights to bf16 once beats `torch.autocast`, which re-casts every weight on every
  call; LayerNorm and softmax keep fp32 accumulation inside the bf16 kernels.
- torch.compile with Inductor's freezing folds the weights as constants, so oneDNN can pre-pack them
  and fuse bias and GELU into the GEMMs. It costs a compile (tens of seconds for B/16 on 2 cores); pass
  `compile=False` to skip it and keep the eager speed-ups.
- The compiled and the eager forward are then timed on the example and the faster is kept: which one
  wins depends on the CPU and the precision (in fp32, oneDNN's compiled GEMMs can lose to MKL's).
- glibc malloc is told to keep freed pages (allocator.py): a fresh mmap per activation costs page
  faults on every call.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
import torch.nn as nn

from .allocator import tune_cpu_allocator
from .timing import time_call

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
        return self._fn(x.to(self.dtype)).float()


def optimize_for_inference(
    model: nn.Module,
    dtype: torch.dtype = torch.float32,
    compile: bool = True,
    example: torch.Tensor | None = None,
) -> InferenceModel:
    """Return a fast, frozen copy of `model` for inference in `dtype` (float32 or bfloat16).

    `compile=True` compiles with torch.compile and freezing on `example` (default: one random image;
    give your batch size, the compile is specialised to it), times the compiled and the eager forward
    on it and keeps the faster; `.optimizations` says which and by how much, `.compile_time_s` what the compile
    cost. Falls back to eager with a warning if Inductor is unusable here. The original model is left
    untouched.
    """
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
    m = copy.deepcopy(model).eval().requires_grad_(False)
    optimizations = ["eval", "no-grad inference mode"]
    device = next(m.parameters()).device
    if device.type == "cpu" and tune_cpu_allocator():
        optimizations.append("malloc keeps freed pages")
    if dtype == torch.bfloat16:
        m = m.to(torch.bfloat16)
        optimizations.append("weights cast to bf16 once")
    fn: Any = m
    compile_time = 0.0
    if compile:
        if example is None:
            h, w = m.config.img_size
            example = torch.randn(1, m.config.in_chans, h, w)
        example = example.to(dtype=dtype, device=device)
        try:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            compiled = torch.compile(m, dynamic=False)
            t = time.perf_counter()
            with torch.inference_mode():
                compiled(example)
            compile_time = time.perf_counter() - t
        except Exception as e:  # a missing C++ compiler, an unsupported platform
            log.warning("torch.compile unavailable (%s: %s); using eager", type(e).__name__, str(e)[:200])
        else:
            # Measurement picks: on some CPUs oneDNN's compiled fp32 GEMMs lose to MKL's eager ones.
            with torch.inference_mode():
                t_compiled, t_eager = (time_call(lambda f=f: f(example), device, warmup=1, iters=1,
                                                 repeats=3) for f in (compiled, m))
            if t_compiled < t_eager:
                fn = compiled
                optimizations.append(f"torch.compile (Inductor, freezing): {t_eager / t_compiled:.2f}x eager")
            else:
                optimizations.append(f"eager: torch.compile measured {t_eager / t_compiled:.2f}x eager, not used")
    return InferenceModel(m, fn, dtype, optimizations, compile_time)
