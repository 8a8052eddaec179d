"""The GELU forms a fast path may run in place of the model's tanh GELU, and why (perf/inference.py's
docstring; the measurements are in docs/benchmarks.md)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

ERF = "GELU in its erf form"  # as .optimizations names the bf16 candidates built by gelu_as_erf


@torch.library.custom_op("mixerlab::gelu_erf", mutates_args=())
def _aten_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x)


@_aten_gelu.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class AtenGelu(nn.Module):
    """The erf GELU as one opaque call to ATen's kernel under torch.compile. Token mixing's GELU
    follows a product that no library fuses it into (its weight is on the left), so it is a pass of
    its own either way, and ATen's vectorised bf16 kernel runs it faster than the code Inductor
    generates for erf (docs/benchmarks.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _aten_gelu(x)


def gelu_as_erf(model: nn.Module, opaque_token_gelu: bool = False) -> nn.Module | None:
    """A copy whose tanh GELUs are erf GELUs (the bf16 candidate: perf/inference.py's docstring), or None
    when the model has no tanh GELU. `opaque_token_gelu`: token mixing's as `AtenGelu`, for compiling."""
    from ..models.layers import GeluTanh
    from ..models.mixer import TokenMlp

    if not any(isinstance(mod, GeluTanh) for mod in model.modules()):
        return None
    m = copy.deepcopy(model)
    for parent in list(m.modules()):
        for name, child in parent.named_children():
            if isinstance(child, GeluTanh):
                opaque = opaque_token_gelu and isinstance(parent, TokenMlp)
                setattr(parent, name, AtenGelu() if opaque else nn.GELU())
    return m
