"""Small building blocks shared by the Mixer and the ViT baseline."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

# "gelu_tanh" is what the official Flax code computes (flax.linen.gelu defaults to approximate=True);
# "gelu" is the exact erf form that timm and torchvision use.
ACTIVATIONS = ("gelu_tanh", "gelu")


_TWO_SQRT_2_OVER_PI = 2 * math.sqrt(2 / math.pi)


def gelu_tanh_as_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """The tanh GELU rewritten with 0.5 * (1 + tanh(z)) = sigmoid(2z): the same function, but a
    compiler's generated code evaluates one exp where tanh costs several (docs/benchmarks.md)."""
    return x * torch.sigmoid(x * (_TWO_SQRT_2_OVER_PI + _TWO_SQRT_2_OVER_PI * 0.044715 * x * x))


class GeluTanh(nn.GELU):
    """nn.GELU(approximate="tanh"); under torch.compile, the sigmoid form of the same function. An
    export keeps the GELU op itself, which ONNX Runtime and oneDNN fuse as one."""

    def __init__(self):
        super().__init__(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
            return gelu_tanh_as_sigmoid(x)
        return super().forward(x)


def make_act(name: str) -> nn.Module:
    if name == "gelu_tanh":
        return GeluTanh()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def to_2tuple(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    t = tuple(int(v) for v in x)
    if len(t) != 2:
        raise ValueError(f"expected an int or a pair (H, W), got {x!r}")
    return t  # type: ignore[return-value]


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample.

    `batch_dim` says which axis holds the samples, since the Mixer keeps its activations token-major
    (S, B, C) while the ViT keeps them batch-major (B, N, C).
    """

    def __init__(self, p: float = 0.0, batch_dim: int = 0):
        super().__init__()
        self.p = float(p)
        self.batch_dim = batch_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = [1] * x.ndim
        shape[self.batch_dim] = x.shape[self.batch_dim]
        mask = x.new_empty(shape).bernoulli_(keep).div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def lecun_normal_(t: torch.Tensor, fan_in: int) -> torch.Tensor:
    """Flax's `lecun_normal`: a normal truncated at two standard deviations, rescaled so that the
    variance is exactly 1/fan_in (0.8796... is the std of a unit normal truncated to [-2, 2]).

    Drawn as jax.random.truncated_normal draws it, by the inverse CDF (a uniform in [cdf(-2), cdf(2)]
    through erfinv): one pass over the tensor, where torch's `trunc_normal_` rejects and redraws the
    whole tensor several times (9 s for Mixer-B/16's 60M weights, against under 1 s this way)."""
    if t.is_meta:
        return t
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    lo, hi = math.erf(-2 / math.sqrt(2)), math.erf(2 / math.sqrt(2))  # 2 * cdf(+-2) - 1
    with torch.no_grad():
        t.uniform_(lo, hi).erfinv_().mul_(std * math.sqrt(2.0))
        return t.clamp_(-2 * std, 2 * std)  # erfinv's rounding at the ends
