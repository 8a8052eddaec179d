"""Muon with the Newton-Schulz iterations of same-shape matrices batched into one product each.

torch.optim.Muon orthogonalises one matrix at a time: for a Mixer that is 4 x depth small products
per iteration, each too small to keep the cores busy. A Mixer's hidden matrices come in four shapes
(token mixing in and out, channel mixing in and out), so stacking each shape turns 4 x depth
products into 4 batched ones. The arithmetic is torch's (bf16 iterations with its coefficients, the
same momentum, weight decay and learning-rate adjustment), and the state is torch's too
(`momentum_buffer` per parameter): checkpoints move between the two. Batched products may round
differently in the last bits; tests/test_optim.py holds the two within tolerance.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch


def iteration_dtype(device: torch.device) -> torch.dtype:
    """torch's bf16 where the hardware computes it (CUDA, CPUs with AVX512-BF16 or AMX); fp32 on other
    CPUs, where bf16 products are emulated and the iterations took most of the demo's step (196 ms a
    call against a few on a Zen 3 core, docs/results.md). fp32 is the more exact of the two."""
    if device.type != "cpu":
        return torch.bfloat16
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    except (AttributeError, RuntimeError):
        return torch.float32


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """Orthogonalise each matrix of a (n, rows, cols) stack, as torch's `_zeropower_via_newtonschulz`
    (in `dtype`, by default `iteration_dtype` of its device)."""
    a, b, c = coefficients
    x = g.to(dtype or iteration_dtype(g.device))
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, update, x, beta=a)
    return x.mT if tall else x


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's learning-rate adjustment for a matrix of `shape`."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn == "spectral_unclamped":
        return lr * math.sqrt(rows / cols)
    return lr


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon, orthogonalising all matrices of one shape in one batched product.
    `ns_dtype` forces the iterations' dtype (torch's own is bf16 everywhere; see `iteration_dtype`)."""

    def __init__(self, params, *args, ns_dtype: torch.dtype | None = None, **kwargs):
        super().__init__(params, *args, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                bufs.append(state["momentum_buffer"])
            self._update(group, params, grads, bufs)
        return loss

    def _update(self, group: dict, params: list, grads: list, bufs: list) -> None:
        lr, wd, momentum = float(group["lr"]), group["weight_decay"], group["momentum"]
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
        updates = [g.lerp(b, momentum) for g, b in zip(grads, bufs)] if group["nesterov"] else bufs
        by_shape: dict[torch.Size, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            by_shape[p.shape].append(i)
        torch._foreach_mul_(params, 1 - lr * wd)
        for shape, idx in by_shape.items():
            ortho = newton_schulz(torch.stack([updates[i] for i in idx]), group["ns_coefficients"],
                                  group["ns_steps"], group["eps"], self.ns_dtype)
            step = -adjusted_lr(lr, group["adjust_lr_fn"], shape)
            torch._foreach_add_([params[i] for i in idx], list(ortho.unbind(0)), alpha=step)
