"""A model as a Hugging Face / timm repo folder, the layout `timm.create_model("hf-hub:ORG/NAME")`,
`timm.create_model("local-dir:PATH")` and transformers' `TimmWrapper` (`pipeline("image-classification")`)
read with no mixerlab installed:

- `config.json`: timm's keys (`architecture`, `num_classes`, `num_features`, `label_names`,
  `pretrained_cfg` from the model's own preprocessing, `model_args` where it differs from the name);
- `model.safetensors`: the weights in timm's names (ours are timm's), our full config in its header so
  that `mixerlab.from_pretrained(folder)` reads back exactly what was written (timm ignores it);
- `README.md`: the model card (card.py).

timm builds an MLP-Mixer only through its registered names, and each of them fixes the patch size, the
depth and the width (`mixer_b16_224` is P=16, 12 layers, C=768; `model_args` cannot override those);
what `model_args` can still set is the image size, the input channels, the classes and the two MLP
ratios. A Mixer of another (P, N, C) is refused with the reason and what to do instead. timm's ViT
names take every field from `model_args`, so any of our ViTs goes.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import MixerlabError
from ..io_utils import atomic_write, atomic_write_bytes, writable_folder
from ..models import serialization
from ..models.config import MixerConfig, ViTConfig
from .load import HUB_METADATA_KEY

log = logging.getLogger(__name__)

# timm's registered Mixers: (patch, depth, width) -> name (timm/models/mlp_mixer.py)
TIMM_MIXERS = {(32, 8, 512): "mixer_s32_224", (16, 8, 512): "mixer_s16_224", (32, 12, 768): "mixer_b32_224",
               (16, 12, 768): "mixer_b16_224", (32, 24, 1024): "mixer_l32_224", (16, 24, 1024): "mixer_l16_224"}
# timm's ViT families by (width, depth, heads); the patch size completes the name
TIMM_VITS = {(192, 12, 3): "vit_tiny", (384, 12, 6): "vit_small", (768, 12, 12): "vit_base",
             (1024, 24, 16): "vit_large", (1280, 32, 16): "vit_huge"}
HUB_FILES = ("config.json", "model.safetensors", "README.md")


class HubError(MixerlabError, ValueError):
    """A model that cannot be written as a timm repo, or a repo that cannot be written or pushed."""


def _ratio(hidden: int, width: int) -> float:
    """hidden / width as timm's `int(width * ratio)` gives back exactly."""
    r = hidden / width
    if int(width * r) != hidden:
        raise HubError(f"an MLP of {hidden} units on a width of {width} is no ratio timm rounds back to {hidden}")
    return r


def timm_architecture(cfg: MixerConfig | ViTConfig) -> tuple[str, dict[str, Any]]:
    """(timm's registered name, model_args) that build `cfg` exactly in timm, or HubError saying why not
    and what to write instead."""
    alt = ("write a bare timm state dict instead (mixerlab convert SRC OUT.safetensors --format timm) or a "
           "mixerlab folder (--format mixerlab)")
    if cfg.norm_eps != 1e-6:
        raise HubError(f"timm's models use LayerNorm eps 1e-6; this one uses {cfg.norm_eps}: {alt}")
    h, w = cfg.img_size
    args: dict[str, Any] = {"img_size": h if h == w else [h, w], "in_chans": cfg.in_chans}
    if isinstance(cfg, MixerConfig):
        name = TIMM_MIXERS.get((cfg.patch_size, cfg.depth, cfg.embed_dim))
        if name is None:
            have = ", ".join(f"P={p} N={n} C={c} ({v})" for (p, n, c), v in TIMM_MIXERS.items())
            raise HubError(
                f"timm cannot build this Mixer: its registered names fix patch size, depth and width together "
                f"({have}) and model_args cannot change them; this one is P={cfg.patch_size} N={cfg.depth} "
                f"C={cfg.embed_dim}. Write a bare timm state dict instead (mixerlab convert SRC OUT.safetensors "
                f"--format timm) and load it with timm.models.mlp_mixer.MlpMixer(patch_size={cfg.patch_size}, "
                f"num_blocks={cfg.depth}, embed_dim={cfg.embed_dim}, "
                f"mlp_ratio=({cfg.tokens_mlp_dim / cfg.embed_dim:g}, {cfg.channels_mlp_dim / cfg.embed_dim:g}), "
                f"img_size={h}, in_chans={cfg.in_chans}, "
                f"num_classes={cfg.num_classes}).load_state_dict(safetensors.torch.load_file('OUT.safetensors')), "
                f"or a mixerlab folder (--format mixerlab)")
        try:
            ratios = [_ratio(cfg.tokens_mlp_dim, cfg.embed_dim), _ratio(cfg.channels_mlp_dim, cfg.embed_dim)]
        except HubError as e:
            raise HubError(f"timm cannot build this Mixer: {e}; {alt}") from None
        if ratios != [0.5, 4.0]:
            args["mlp_ratio"] = ratios
        return name, args
    family = TIMM_VITS.get((cfg.embed_dim, cfg.depth, cfg.num_heads))
    try:
        ratio = _ratio(cfg.mlp_dim, cfg.embed_dim)
    except HubError as e:
        raise HubError(f"timm cannot build this ViT: {e}; {alt}") from None
    if family is None or cfg.patch_size not in (16, 32):
        # timm's ViT names take every field from model_args (dict(model_args, **kwargs))
        name = "vit_base_patch16_224"
        args.update(patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads)
    else:
        name = f"{family}_patch{cfg.patch_size}_224"
    if ratio != 4.0:
        args["mlp_ratio"] = ratio
    if cfg.act != "gelu":
        args["act_layer"] = cfg.act  # timm's ViT resolves activation names (get_act_layer)
    return name, args


def activation_note(model: nn.Module) -> dict[str, Any] | None:
    """Where timm would compute something else than this model: a Mixer with the official tanh GELU,
    which timm's MlpMixer cannot be told to use (it takes the activation as a class, not a name). The
    difference is measured on a fixed batch: the largest logit change and how often the top class
    stays the same."""
    cfg = model.config
    if not isinstance(cfg, MixerConfig) or cfg.act == "gelu":
        return None
    from ..models.registry import model_from_config

    other = model_from_config(cfg.replace(act="gelu"))
    other.load_state_dict(model.state_dict())
    x = torch.randn(64, cfg.in_chans, *cfg.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model.eval()(x), other.eval()(x)
    if cfg.num_classes == 0:
        agree = 1.0
    else:
        agree = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    return {"ours": cfg.act, "timm": "gelu", "max_abs_logit_diff": float((a - b).abs().max()),
            "top1_agreement": agree, "batch": "64 images of N(0, 1) noise, seed 0"}


def hub_config(model: nn.Module) -> dict[str, Any]:
    """timm's config.json for `model`."""
    cfg = model.config
    name, args = timm_architecture(cfg)
    chans = cfg.in_chans
    mean = list(cfg.mean) * (chans if len(cfg.mean) == 1 else 1)
    std = list(cfg.std) * (chans if len(cfg.std) == 1 else 1)
    pre = {"input_size": [chans, *cfg.img_size], "fixed_input_size": True, "interpolation": cfg.interpolation,
           "crop_pct": cfg.crop_pct, "crop_mode": "center", "mean": mean, "std": std,
           "num_classes": cfg.num_classes, "first_conv": "stem.proj" if cfg.arch == "mixer" else "patch_embed.proj",
           "classifier": "head"}
    out: dict[str, Any] = {"architecture": name, "num_classes": cfg.num_classes,
                           "num_features": int(model.num_features), "global_pool": "avg" if cfg.arch == "mixer"
                           else "token", "pretrained_cfg": pre}
    names = getattr(model, "class_names", None)
    if names:
        out["label_names"] = list(names)
    if args:
        out["model_args"] = args
    return out


def check_out_dir(out: Path, overwrite: bool) -> None:
    """An existing folder that holds anything is refused unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise HubError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise HubError(f"{out}: folder is not empty; choose another or pass --overwrite")


def save_hub(model: nn.Module, out_dir: str | os.PathLike, source: str | os.PathLike | None = None,
             repo_id: str | None = None, license: str = "other", overwrite: bool = False) -> dict[str, Any]:
    """Write `out_dir` in timm's Hub layout (see the module docstring). `source` is where the model
    came from: a run folder (or a checkpoint in one) gives the card its measured metrics. `repo_id`
    ("ORG/NAME") goes into the card's usage lines. Returns what was written and the activation note."""
    from safetensors.torch import save_file

    from .card import model_card

    out = Path(out_dir)
    check_out_dir(out, overwrite)
    config = hub_config(model)  # refuses before anything is written
    note = activation_note(model)
    writable_folder(out)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {serialization.CONFIG_METADATA_KEY: json.dumps(model.config.to_dict(), sort_keys=True),
            HUB_METADATA_KEY: "1"}
    atomic_write(out / "model.safetensors", lambda tmp: save_file(sd, tmp, metadata=meta))
    atomic_write_bytes(out / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    card = model_card(model, config, source, repo_id or f"local-dir:{out}", license, note)
    atomic_write_bytes(out / "README.md", card.encode("utf-8"))
    return {"dir": str(out), "files": list(HUB_FILES), "architecture": config["architecture"], "activation": note}


def push(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False,
         dry_run: bool = False) -> list[str]:
    """Upload a folder written by `save_hub` to the Hub as `repo_id` (created if missing) through
    huggingface_hub's `upload_folder`. `dry_run`: nothing is sent; returns the files it would upload."""
    import re

    folder = Path(folder)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise HubError(f"{repo_id!r}: a Hub repo id is ORG/NAME (letters, digits, '-', '_', '.')")
    missing = [n for n in ("config.json", "model.safetensors") if not (folder / n).is_file()]
    if missing:
        raise HubError(f"{folder}: not a Hub folder (no {', '.join(missing)}); write one with "
                       f"mixerlab convert SRC DIR --format hub")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    if dry_run:
        return files
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    if api.token is None and not os.environ.get("HF_TOKEN"):
        from huggingface_hub import get_token

        if get_token() is None:
            raise HubError("no Hugging Face token: run `huggingface-cli login` or set HF_TOKEN (a token with "
                           "write access), then push again")
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload from mixerlab")
    except HfHubHTTPError as e:
        raise HubError(f"the Hub refused the upload to {repo_id}: {str(e).splitlines()[0]}") from None
    except OSError as e:  # no network: requests' ConnectionError is an OSError
        raise HubError(f"cannot reach the Hugging Face Hub to upload {repo_id} ({type(e).__name__}): check the "
                       f"network, or set HF_ENDPOINT for a mirror") from None
    return files
