"""What a run is built from: the model (new, or fine-tuned from any checkpoint), the optimiser and
the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from ..data.datasets import Dataset
from ..models.config import MixerConfig
from ..models.layers import to_2tuple
from ..models.registry import get_config, model_from_config
from ..weights.load import from_pretrained
from . import optim
from .config import TrainConfig


def auto_model_config(data: Dataset, overrides: dict[str, Any]) -> MixerConfig:
    """A small Mixer for small images, a paper-style S/16 for large ones; the patch divides the image."""
    h, w = data.img_size
    base = "mixer_pico" if max(h, w) <= 64 else "mixer_s16_224"
    want = 4 if base == "mixer_pico" else 16
    patch = next((p for p in range(want, 0, -1) if h % p == 0 and w % p == 0), 1)
    args = dict(img_size=(h, w), patch_size=patch, in_chans=data.in_chans, num_classes=data.num_classes)
    args.update(overrides)
    return get_config(base, **args)  # type: ignore[return-value]


def build_model(cfg: TrainConfig, data: Dataset) -> nn.Module:
    overrides = dict(cfg.model_args)
    if cfg.drop_path_rate:
        overrides["drop_path_rate"] = cfg.drop_path_rate
    if cfg.drop_rate:
        overrides["drop_rate"] = cfg.drop_rate
    if cfg.pretrained:
        size = cfg.img_size or None
        return from_pretrained(cfg.pretrained, num_classes=data.num_classes, img_size=size, **overrides)
    if cfg.img_size and "img_size" not in overrides and to_2tuple(cfg.img_size) != tuple(data.img_size):
        # a built-in set's batches are resized to the model's size as they are fed (data.transforms.prepare:
        # bilinear, the whole image); the model's preprocessing says so, for whoever uses it next
        overrides["img_size"] = to_2tuple(cfg.img_size)
        overrides.setdefault("interpolation", "bilinear")
        overrides.setdefault("crop_pct", 1.0)
    if cfg.model == "auto":
        return model_from_config(auto_model_config(data, overrides))
    args = dict(img_size=data.img_size, in_chans=data.in_chans, num_classes=data.num_classes)
    args.update(overrides)
    return model_from_config(get_config(cfg.model, **args))


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    return optim.build_optimizer(model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 betas=tuple(cfg.betas), momentum=cfg.momentum)


def lr_lambda(cfg: TrainConfig, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warmup from 0, then cosine or linear decay to min_lr; a factor of cfg.lr per step."""
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        decay = 0.5 * (1 + math.cos(math.pi * t)) if cfg.schedule == "cosine" else 1 - t
        return floor + (1 - floor) * decay

    if cfg.schedule not in ("cosine", "linear"):
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose cosine or linear")
    return f
