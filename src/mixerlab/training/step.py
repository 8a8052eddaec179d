"""One optimiser step, and the seed that makes it reproducible."""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.transforms import mixup, prepare, soft_targets
from ..perf.runtime import autocast
from .config import TrainConfig


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """Everything random in a step is drawn after seeding with this, so a resumed run draws exactly
    what the uninterrupted one drew, and no generator state needs to be saved."""
    return (seed * 1_000_003 + epoch * 100_003 + step * 1009 + rank * 7) % (2**63)


def compile_for_training(model: nn.Module) -> nn.Module:
    """torch.compile (Inductor) for the forward and backward of the step: GELU, LayerNorm, the bf16
    casts and the residual adds fused into a few kernels, which on a CPU are a third of a small Mixer's
    step in eager mode (docs/benchmarks.md). The first step pays the compile."""
    try:
        return torch.compile(model)
    except RuntimeError as e:  # a platform torch.compile does not support
        import logging

        logging.getLogger(__name__).warning("torch.compile unavailable (%s); training eagerly", e)
        return model


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


class StepResult(NamedTuple):
    loss: float  # mean over the step's images
    grad_norm: float  # before clipping
    top1: float  # share of the step's (augmented) images whose largest logit is their label


def train_step(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], optimizer, cfg: TrainConfig,
               num_classes: int, device: torch.device, precision: str, scaler=None) -> StepResult:
    """One optimiser step over `accum` micro-batches of (augmented) uint8 images.

    The loss of each micro-batch is divided by their number, so K micro-batches of B give the same
    gradient as one batch of K*B; under DDP, gradients are all-reduced on the last micro-batch only.
    """
    total, correct, seen = 0.0, 0, 0
    n = len(batches)
    if n == 0:  # every image of the step was unusable (streaming skips them): nothing to learn from
        return StepResult(0.0, 0.0, 0.0)
    for i, (xb, yb) in enumerate(batches):
        x = prepare(xb, unwrap(model), device)
        y = yb.to(device)
        targets = soft_targets(y, num_classes, cfg.label_smoothing)
        x, targets = mixup(x, targets, cfg.mixup)
        sync = nullcontext() if i == n - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, precision):
                logits = model(x)
            loss = soft_cross_entropy(logits, targets) / n
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
        total += loss.item()
        correct += int((logits.detach().argmax(-1) == y).sum())
        seen += len(y)
    if scaler is not None:
        scaler.unscale_(optimizer)
    clip = cfg.clip_grad if cfg.clip_grad > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True).item()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(total, grad_norm, correct / max(seen, 1))
