"""Named model configurations and `create_model`, in timm's style."""

from __future__ import annotations

import fnmatch
from typing import Any

import torch.nn as nn

from .config import MixerConfig, ViTConfig, config_from_dict
from .mixer import MlpMixer
from .vit import VisionTransformer

# Paper Table 1: (C, D_S, D_C, N) per size.
_MIXER_SIZES = {
    "s": (512, 256, 2048, 8),
    "b": (768, 384, 3072, 12),
    "l": (1024, 512, 4096, 24),
    "h": (1280, 640, 5120, 32),
}
# ViT sizes from Dosovitskiy et al. and timm: (C, heads, MLP, N).
_VIT_SIZES = {
    "s": (384, 6, 1536, 12),
    "b": (768, 12, 3072, 12),
    "l": (1024, 16, 4096, 24),
}


# Preprocessing: the paper sizes take timm's for Google's weights (mean 0.5, std 0.5, bicubic resize of
# the shorter side to 224 / 0.875, centre crop); the small models take their images whole.
_SMALL_IMAGES: dict[str, Any] = dict(interpolation="bilinear", crop_pct=1.0)


def _mixer(size: str, patch: int, **kw: Any) -> MixerConfig:
    c, ds, dc, n = _MIXER_SIZES[size]
    return MixerConfig(
        patch_size=patch, embed_dim=c, tokens_mlp_dim=ds, channels_mlp_dim=dc, depth=n, **kw
    )


def _vit(size: str, patch: int, **kw: Any) -> ViTConfig:
    c, h, m, n = _VIT_SIZES[size]
    return ViTConfig(patch_size=patch, embed_dim=c, num_heads=h, mlp_dim=m, depth=n, crop_pct=0.9, **kw)


_REGISTRY: dict[str, MixerConfig | ViTConfig] = {
    # The paper's configurations (Table 1), at 224 px and 1000 classes.
    "mixer_s32_224": _mixer("s", 32),
    "mixer_s16_224": _mixer("s", 16),
    "mixer_b32_224": _mixer("b", 32),
    "mixer_b16_224": _mixer("b", 16),
    "mixer_l32_224": _mixer("l", 32),
    "mixer_l16_224": _mixer("l", 16),
    "mixer_h14_224": _mixer("h", 14),
    # Small Mixers for 28-32 px images (Fashion-MNIST, MNIST, CIFAR). 4x4 patches give 49-64 tokens.
    # Such images are used whole: resized (bilinear) to the input size, never cropped.
    "mixer_nano": MixerConfig(
        img_size=(28, 28), patch_size=4, in_chans=1, num_classes=10,
        embed_dim=128, tokens_mlp_dim=64, channels_mlp_dim=512, depth=8, **_SMALL_IMAGES,
    ),
    # The demo's shape: half the depth-wise cost of nano (D_C = 2C, 6 layers) and exact GELU, which
    # is cheaper than the tanh form in bf16 on CPUs; what `--model auto` trains on small images.
    "mixer_pico": MixerConfig(
        img_size=(28, 28), patch_size=4, in_chans=1, num_classes=10,
        embed_dim=128, tokens_mlp_dim=64, channels_mlp_dim=256, depth=6, act="gelu", **_SMALL_IMAGES,
    ),
    "mixer_micro": MixerConfig(
        img_size=(28, 28), patch_size=4, in_chans=1, num_classes=10,
        embed_dim=256, tokens_mlp_dim=128, channels_mlp_dim=1024, depth=8, **_SMALL_IMAGES,
    ),
    # The ViT baseline.
    "vit_s16_224": _vit("s", 16),
    "vit_b16_224": _vit("b", 16),
    "vit_l16_224": _vit("l", 16),
    "vit_b32_224": _vit("b", 32),
    "vit_nano": ViTConfig(
        img_size=(28, 28), patch_size=4, in_chans=1, num_classes=10,
        embed_dim=128, num_heads=4, mlp_dim=512, depth=8, **_SMALL_IMAGES,
    ),
}

_MODEL_CLASSES: dict[str, type[nn.Module]] = {"mixer": MlpMixer, "vit": VisionTransformer}


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, e.g. `list_models("mixer_*")`."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_config(name: str, **overrides: Any) -> MixerConfig | ViTConfig:
    if name not in _REGISTRY:
        close = [n for n in _REGISTRY if name.split("_")[0] in n]
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(close or list_models())}")
    try:
        return _REGISTRY[name].replace(**overrides)  # type: ignore[return-value]
    except TypeError as e:
        raise ValueError(f"bad override for {name}: {e}") from None


def model_from_config(cfg: MixerConfig | ViTConfig | dict[str, Any]) -> nn.Module:
    """Build a model from a config object or its JSON dict (the `arch` key picks the family)."""
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    return _MODEL_CLASSES[cfg.arch](cfg)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model with random weights, e.g. `create_model("mixer_b16_224", num_classes=10)`.
    `mixerlab.create_model` adds `pretrained=` on top of this (mixerlab.weights)."""
    return model_from_config(get_config(name, **overrides))
