"""timm's state dicts: our parameter names are timm's, so only the config has to be inferred on the
way in (from the shapes) and nothing renamed on the way out."""

from __future__ import annotations

import os
import re

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..io_utils import atomic_write
from ..models.config import MixerConfig, ViTConfig


def _block_count(sd: dict[str, torch.Tensor]) -> int:
    return len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})


def config_from_state_dict(sd: dict[str, torch.Tensor], src: str) -> MixerConfig | ViTConfig:
    """Config of a timm-named state dict (timm's mlp_mixer or vision_transformer) from its shapes."""

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
            embed_dim=c, tokens_mlp_dim=ds, channels_mlp_dim=dc, depth=depth, act="gelu", init="timm",
        )
    if "patch_embed.proj.weight" in sd and "pos_embed" in sd and depth:
        c, in_chans, p, _ = shape("patch_embed.proj.weight")
        s = shape("pos_embed")[1] - 1
        g = int(round(s**0.5))
        mlp = shape("blocks.0.mlp.fc1.weight")[0]
        # Head count is not in the shapes; 64-wide heads is what every ViT size uses.
        return ViTConfig(
            img_size=(g * p, g * p), patch_size=p, in_chans=in_chans, num_classes=num_classes,
            embed_dim=c, depth=depth, num_heads=max(c // 64, 1), mlp_dim=mlp,
        )
    sample = ", ".join(list(sd)[:4])
    raise CheckpointError(
        f"{src}: not an MLP-Mixer or ViT checkpoint (no 'stem.proj.weight' or 'patch_embed.proj.weight' "
        f"with 'blocks.*'; found keys such as {sample})"
    )


def save_timm(model: nn.Module, path: str | os.PathLike) -> None:
    """A timm state dict (our parameter names are timm's), as .safetensors or torch .pth by suffix."""
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        atomic_write(path, lambda tmp: save_file(sd, tmp))
    else:
        atomic_write(path, lambda tmp: torch.save(sd, tmp))
