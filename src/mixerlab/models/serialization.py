"""A model's own saved form: a folder with `model.safetensors` and `config.json`.

This is the format `model.save_pretrained` writes and `MlpMixer.from_pretrained` reads, kept with the
models (as Hugging Face keeps it with `PreTrainedModel`) because it needs nothing but the model's own
config and state dict. Every other format (official npz, timm, training runs, the Hugging Face cache)
is read by `mixerlab.weights`, which builds on this module.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io_utils import atomic_write, atomic_write_json, writable_folder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CONFIG_METADATA_KEY = "mixerlab_config"  # the config also travels inside the safetensors header


def save_pretrained(model: torch.nn.Module, save_directory: str | os.PathLike) -> Path:
    """Write `model.safetensors` (with the config in its metadata too) and `config.json`."""
    from safetensors.torch import save_file

    out = Path(save_directory)
    writable_folder(out)
    cfg_json = json.dumps(model.config.to_dict(), sort_keys=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(sd, tmp, metadata={CONFIG_METADATA_KEY: cfg_json}))
    names = getattr(model, "class_names", None)
    atomic_write_json(out / CONFIG_NAME, {**model.config.to_dict(), **({"class_names": names} if names else {})})
    return out


def is_saved_model_dir(path: Path) -> bool:
    """A folder written by `save_pretrained`. timm's Hugging Face repos hold the same two file names
    with timm's config ("architecture", no "arch"), so the config decides."""
    return ((path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()
            and '"arch"' in (path / CONFIG_NAME).read_text())


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the header metadata of a .safetensors file; errors name the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): {e}") from None


def read_json(path: Path) -> Any:
    """A JSON file, or one CheckpointError naming it."""
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: bad JSON: {e}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None


def read_saved_model(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, config dict with "class_names" when saved) of a `save_pretrained` folder."""
    config = read_json(path / CONFIG_NAME)
    sd, _ = read_safetensors(path / WEIGHTS_NAME)
    return sd, config


def check_depth(cfg: Any, sd: dict[str, torch.Tensor], src: str) -> None:
    """The config's depth against the blocks the weights hold, counted from the keys: a config can say
    depth 10^9, and building that many blocks (even without memory) would never end."""
    held = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if cfg.depth != len(held):
        raise CheckpointError(f"{src}: its config says depth {cfg.depth}, but the weights hold {len(held)} blocks")


def load_into(model: torch.nn.Module, sd: dict[str, torch.Tensor], src: str) -> None:
    """Check every key and shape first, then copy: a mismatch never leaves a half-loaded model."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{src}: missing keys {missing[:5]}, unexpected keys {extra[:5]}")
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{src}: key {k!r} has shape {list(sd[k].shape)}, the model expects {list(v.shape)}"
            )
    # assign=True adopts the loaded tensors, so a model built on the meta device becomes real.
    model.load_state_dict({k: v.to(torch.float32).contiguous() for k, v in sd.items()}, strict=True, assign=True)
