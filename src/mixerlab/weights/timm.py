"""timm's state dicts: our parameter names are timm's, so only the config has to be inferred on the
way in (from the shapes) and nothing renamed on the way out."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..io_utils import atomic_write
from ..models.config import MixerConfig, ViTConfig


def _block_count(sd: dict[str, torch.Tensor]) -> int:
    return len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})


# timm's ViT families and their head counts (timm/models/vision_transformer.py): the shapes of a state
# dict do not say how the width is split into heads.
VIT_HEADS = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12, "vit_medium": 8, "vit_large": 16, "vit_huge": 16}


def heads_from_timm_config(timm_config: dict) -> int | None:
    """The head count a timm Hugging Face `config.json` states: in its model_args, or by its
    architecture's family (vit_base_patch16_224 -> 12)."""
    args = timm_config.get("model_args") or {}
    if isinstance(args.get("num_heads"), int):
        return args["num_heads"]
    arch = str(timm_config.get("architecture", ""))
    return next((h for family, h in VIT_HEADS.items() if arch.startswith(family + "_")), None)


def preprocess_from_timm_config(timm_config: dict) -> dict[str, Any]:
    """mean, std, interpolation and crop_pct from a timm `config.json`'s pretrained_cfg (timm's miil
    weights, for one, take mean 0 and std 1 where Google's take 0.5 and 0.5)."""
    pcfg = timm_config.get("pretrained_cfg") or {}
    out = {k: pcfg[k] for k in ("mean", "std", "interpolation", "crop_pct") if pcfg.get(k) is not None}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


def config_from_state_dict(sd: dict[str, torch.Tensor], src: str, num_heads: int | None = None,
                           preprocess: dict[str, Any] | None = None) -> MixerConfig | ViTConfig:
    """Config of a timm-named state dict (timm's mlp_mixer or vision_transformer) from its shapes. A ViT
    also needs `num_heads`, which the shapes do not hold. `preprocess` is the weights' preprocessing
    (a timm config.json's); without it, the paper sizes' defaults (Google's: mean 0.5, std 0.5) are used."""
    pre = dict(preprocess or {})

    def shape(k: str) -> tuple[int, ...]:
        if k not in sd:
            raise CheckpointError(f"{src}: missing key {k!r}")
        return tuple(sd[k].shape)

    depth = _block_count(sd)
    num_classes = shape("head.weight")[0] if "head.weight" in sd else 0
    if "stem.proj.weight" in sd and depth:
        c, in_chans, p, _ = shape("stem.proj.weight")
        ds, s = shape("blocks.0.mlp_tokens.fc1.weight")
        dc = shape("blocks.0.mlp_channels.fc1.weight")[0]
        g = int(round(s**0.5))
        if g * g != s:
            raise CheckpointError(f"{src}: {s} tokens is not a square grid; pass img_size")
        return MixerConfig(
            img_size=(g * p, g * p), patch_size=p, in_chans=in_chans, num_classes=num_classes,
            embed_dim=c, tokens_mlp_dim=ds, channels_mlp_dim=dc, depth=depth, act="gelu", init="timm", **pre,
        )
    if "patch_embed.proj.weight" in sd and "pos_embed" in sd and depth:
        c, in_chans, p, _ = shape("patch_embed.proj.weight")
        s = shape("pos_embed")[1] - 1
        g = int(round(s**0.5))
        mlp = shape("blocks.0.mlp.fc1.weight")[0]
        if num_heads is None:
            raise CheckpointError(
                f"{src}: a ViT state dict does not record how many attention heads it has (width {c}); pass "
                f"num_heads=N (mixerlab.from_pretrained(src, num_heads=N), or --model-arg num_heads=N): timm's "
                f"ViT-S, -B and -L use 6, 12 and 16"
            )
        return ViTConfig(
            img_size=(g * p, g * p), patch_size=p, in_chans=in_chans, num_classes=num_classes,
            embed_dim=c, depth=depth, num_heads=num_heads, mlp_dim=mlp, **{"crop_pct": 0.9, **pre},
        )
    sample = ", ".join(list(sd)[:4])
    raise CheckpointError(
        f"{src}: not an MLP-Mixer or ViT checkpoint (no 'stem.proj.weight' or 'patch_embed.proj.weight' "
        f"with 'blocks.*'; found keys such as {sample})"
    )


def save_timm(model: nn.Module, path: str | os.PathLike) -> None:
    """A timm state dict (our parameter names are timm's), as .safetensors or torch .pth by suffix. A
    .safetensors file also carries our config (preprocessing included) in its header metadata, which
    timm ignores; a .pth file carries the weights alone."""
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        meta = {"mixerlab_config": json.dumps(model.config.to_dict(), sort_keys=True)}
        atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
    else:
        atomic_write(path, lambda tmp: torch.save(sd, tmp))
