"""Analytical cost per image, counted the way timm and the paper count it: multiply-accumulates of
the matrix products (stem, MLPs, attention, head); norms, activations and adds are left out."""

from __future__ import annotations

import torch.nn as nn

from .config import MixerConfig, ViTConfig


def count_macs(model_or_config: nn.Module | MixerConfig | ViTConfig) -> int:
    cfg = getattr(model_or_config, "config", model_or_config)
    p, s, c = cfg.patch_size, cfg.num_patches, cfg.embed_dim
    stem = s * (p * p * cfg.in_chans) * c
    head = c * cfg.num_classes
    if isinstance(cfg, MixerConfig):
        token = 2 * c * s * cfg.tokens_mlp_dim  # S -> D_S -> S, for each of C channels
        channel = 2 * s * c * cfg.channels_mlp_dim
        return stem + cfg.depth * (token + channel) + head
    if isinstance(cfg, ViTConfig):
        n = s + 1  # class token
        qkv_proj = n * c * 3 * c + n * c * c
        attn = 2 * n * n * c  # q @ k^T and attn @ v
        mlp = 2 * n * c * cfg.mlp_dim
        return stem + cfg.depth * (qkv_proj + attn + mlp) + head
    raise TypeError(f"cannot count MACs of {type(cfg).__name__}")


def count_flops(model_or_config: nn.Module | MixerConfig | ViTConfig) -> int:
    """FLOPs = 2 x MACs."""
    return 2 * count_macs(model_or_config)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
