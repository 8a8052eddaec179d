"""Loading weights in every format a user brings, detected from the content.

- official JAX/Flax `.npz` (vit_jax, big_vision), see `official.py`;
- timm state dicts (`.pth`, `.pt`, `.bin` through `torch.load(weights_only=True)`, or `.safetensors`),
  see `timm.py`;
- our own format: a folder with `model.safetensors` and `config.json` (`models/serialization.py`),
  also found in the Hugging Face cache as "user/repo", offline;
- `mixerlab train` runs and their checkpoints.

Nothing is ever unpickled beyond plain tensors and containers, and no half-loaded model is returned:
the state dict is checked whole against the model before anything is copied.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError, ConfigError
from ..models import serialization
from ..models.config import MixerConfig, ViTConfig, class_names_problem, config_from_dict
from ..models.layers import to_2tuple
from ..models.registry import create_model as create_random_model
from ..models.registry import get_config, model_from_config
from ..models.resize import resize_token_mixing
from . import npz, official, timm

log = logging.getLogger(__name__)

TRAIN_CKPT_NAMES = ("best.pt", "last.pt")
HUB_METADATA_KEY = "mixerlab_hub"  # in the model.safetensors of a folder `save_hub` wrote


# --------------------------------------------------------------------------------------- reading
def detect_format(path: Path) -> str:
    """'mixerlab-dir', 'timm-dir', 'run-dir', 'npz', 'torch' or 'safetensors', from the bytes, not the name."""
    if path.is_dir():
        if serialization.is_saved_model_dir(path):
            return "mixerlab-dir"
        if (path / serialization.CONFIG_NAME).is_file() and (path / serialization.WEIGHTS_NAME).is_file():
            return "timm-dir"
        if any((path / n).is_file() for n in TRAIN_CKPT_NAMES):
            return "run-dir"
        raise CheckpointError(
            f"{path}: folder holds neither {serialization.WEIGHTS_NAME} + {serialization.CONFIG_NAME} nor a "
            f"training checkpoint ({' or '.join(TRAIN_CKPT_NAMES)})"
        )
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(f"{path}: file is empty or truncated ({len(head)} bytes)")
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{path}: corrupt zip archive (truncated?): {e}") from None
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        raise CheckpointError(f"{path}: a zip archive that is neither an .npz nor a torch checkpoint")
    if head[0] == 0x80:  # a pickle protocol marker: torch's legacy (pre-zip) format
        return "torch"
    header_len = int.from_bytes(head[:8], "little")
    if head[8:9] == b"{" and header_len < 100_000_000:
        return "safetensors"
    raise CheckpointError(f"{path}: unrecognised checkpoint format (not npz, torch or safetensors)")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names a forbidden class or function as a GLOBAL; anything else is a broken stream.
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        found = next((ln for ln in lines if "global" in ln.lower() and "unsupported" in ln.lower()), None)
        if found is None:
            detail = next((ln for ln in lines if ln.startswith("Unsupported operand") or "error" in ln.lower()),
                          lines[-1] if lines else type(e).__name__)
            raise CheckpointError(f"{path}: corrupt file: not a readable torch checkpoint ({detail})") from None
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and plain "
            f"containers, and mixerlab never unpickles code ({found[:200]})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: cannot read torch checkpoint (truncated or corrupt?): {e}") from None


def _unwrap_state_dict(obj: Any, src: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A plain state dict from what torch.load returned, and our config if the file carries one."""
    if isinstance(obj, dict) and "model" in obj and isinstance(obj.get("config"), dict):
        # a mixerlab training checkpoint ("classes" in those written before 0.2)
        names = obj.get("class_names", obj.get("classes"))
        return obj["model"], {**obj["config"], "class_names": names}
    for key in ("state_dict", "model", "model_ema", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{src}: not a state dict (expected a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj, None


def _expected_shapes(cfg: MixerConfig | ViTConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):  # shapes only: no memory, no init
        return {k: v.shape for k, v in model_from_config(cfg).state_dict().items()}


def load_state_and_config(
    src: str | os.PathLike, img_size: tuple[int, int] | None = None, num_heads: int | None = None
) -> tuple[dict[str, torch.Tensor], MixerConfig | ViTConfig, str, list[str] | None]:
    """Read any supported source into (state dict in our names, config, format name, class names).
    `num_heads` is needed only for a ViT whose file holds no config that says it."""
    path = resolve_source(src)
    fmt = detect_format(path)
    preprocess, label_names = None, None
    if fmt == "timm-dir":
        timm_config = serialization.read_json(path / serialization.CONFIG_NAME)
        if not isinstance(timm_config, dict):
            raise CheckpointError(f"{path / serialization.CONFIG_NAME}: not a JSON object")
        num_heads = num_heads or timm.heads_from_timm_config(timm_config)
        preprocess = timm.preprocess_from_timm_config(timm_config)
        label_names = timm_config.get("label_names")
        path, fmt = path / serialization.WEIGHTS_NAME, "safetensors"
    if fmt == "run-dir":
        if not (path / "best.pt").is_file() or not (path / "summary.json").is_file():
            log.warning("%s is a run that has not finished (no %s): this is its model as it stood at its last "
                        "checkpoint; `mixerlab train --resume %s` completes it", path,
                        "best.pt" if not (path / "best.pt").is_file() else "summary.json", path)
        path = next(path / n for n in TRAIN_CKPT_NAMES if (path / n).is_file())
        fmt = "torch"
    if fmt == "npz":
        # Headers first: the config and every shape are checked before a byte of data is inflated.
        headers = official.convert_pre_linen(npz.scan(path))
        cfg = official.infer_config(headers, str(path), img_size)
        shapes = _expected_shapes(cfg)
        official.check_keys_and_shapes(headers, cfg, shapes, str(path))
        return official.official_to_state_dict(npz.read(path, headers), cfg, shapes, str(path)), cfg, "official", None
    config = None
    if fmt == "mixerlab-dir":
        sd, config = serialization.read_saved_model(path)
    elif fmt == "safetensors":
        sd, meta = serialization.read_safetensors(path)
        # In a timm repo folder timm's config.json governs, as it does when timm loads the folder, except
        # in one mixerlab wrote as such (hub.py): there our config is exact (the tanh GELU, say), and
        # config.json gives what timm also reads: the preprocessing and the class names.
        if serialization.CONFIG_METADATA_KEY in meta and (preprocess is None or meta.get(HUB_METADATA_KEY)):
            config = json.loads(meta[serialization.CONFIG_METADATA_KEY])
            if preprocess is not None and isinstance(config, dict):
                config = {**config, **_same_or_timms(config, preprocess),
                          **({"class_names": label_names} if label_names else {})}
    else:
        sd, config = _unwrap_state_dict(_torch_load(path), str(path))
    if config is None:
        if preprocess is None:
            log.info("%s: a timm state dict does not say its preprocessing; assumed Google's (mean 0.5, std 0.5, "
                     "bicubic, crop 0.875). Pass mean=/std= (--mean/--std) for other weights: timm's miil weights "
                     "take mean 0, std 1", path)
        try:
            cfg = timm.config_from_state_dict(sd, str(path), num_heads, preprocess)
        except ConfigError as e:
            raise CheckpointError(f"{path}: bad preprocessing in its timm config: {e}") from None
        # a timm repo's label_names, where they name every class of the head
        names = label_names if (isinstance(label_names, list) and len(label_names) == cfg.num_classes
                                and all(isinstance(n, str) for n in label_names)) else None
        return sd, cfg, "timm", names
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its model config is {type(config).__name__}, not a mapping")
    config = dict(config)
    names = config.pop("class_names", None)
    try:
        cfg = config_from_dict(config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: bad model config: {e}") from None
    problem = class_names_problem(names, cfg.num_classes)
    if problem:
        raise CheckpointError(f"{path}: its config's {problem}")
    return sd, cfg, "mixerlab", names


def _same_or_timms(config: dict[str, Any], preprocess: dict[str, Any]) -> dict[str, Any]:
    """timm's preprocessing fields, but one mean/std value kept as one where timm's config repeats it
    per channel (timm's needs a value per channel; ours may give one for all)."""
    out = dict(preprocess)
    for k in ("mean", "std"):
        ours = config.get(k)
        if k in out and isinstance(ours, list) and len(ours) == 1 and all(v == ours[0] for v in out[k]):
            out[k] = ours
    return out


def resolve_source(src: str | os.PathLike) -> Path:
    """A local path, or "user/repo" found in the Hugging Face cache (never downloaded here)."""
    path = Path(src).expanduser()
    if path.exists():
        return path
    s = str(src)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", s) and not s.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            local = snapshot_download(s, local_files_only=os.environ.get("HF_HUB_OFFLINE", "1") != "0")
            return Path(local)
        except Exception as e:  # huggingface_hub raises several types for "not cached"
            raise CheckpointError(
                f"{s}: no such file or folder, and not in the Hugging Face cache ({type(e).__name__}); "
                f"download it first (huggingface-cli download {s}) or set HF_HUB_OFFLINE=0"
            ) from None
    raise CheckpointError(f"{src}: no such file or folder")


# -------------------------------------------------------------------------------------- building
def load_model(src: str | os.PathLike, img_size: tuple[int, int] | None = None, heads_hint: int | None = None,
               **overrides: Any) -> nn.Module:
    """The checkpoint's model as it was saved; `overrides` set options the weights do not fix.
    `heads_hint` is the head count of a ViT whose file does not say it (a registered name's, say)."""
    sd, cfg, fmt, class_names = load_state_and_config(src, img_size, overrides.get("num_heads", heads_hint))
    try:
        cfg = cfg.replace(**overrides)
    except TypeError as e:
        raise ValueError(f"bad override for {cfg.arch}: {e}") from None
    serialization.check_depth(cfg, sd, str(src))  # before anything is built from the config's numbers
    with torch.device("meta"):  # skip the random init: every tensor is about to be replaced
        model = model_from_config(cfg)
    serialization.load_into(model, sd, str(src))
    model.class_names = class_names
    log.info("loaded %s (%s format): %s", src, fmt, cfg.arch)
    return model


def adapt(model: nn.Module, src: str | os.PathLike, num_classes: int | None,
          size: tuple[int, int] | None, resize_method: str) -> nn.Module:
    """A new head (zero-initialised) and a new resolution, where they differ from the checkpoint's."""
    if num_classes is not None and num_classes != model.num_classes:
        log.warning(
            "%s: replacing the %d-class head with a zero-initialised %d-class head",
            src, model.num_classes, num_classes,
        )
        model.reset_classifier(num_classes)
        model.class_names = None
    if size is not None and size != tuple(model.config.img_size):
        if not isinstance(model.config, MixerConfig):
            raise ValueError("img_size changes are supported for MLP-Mixer checkpoints only")
        model = resize_token_mixing(model, size, method=resize_method)
    return model


def from_pretrained(
    src: str | os.PathLike,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    resize_method: str = "auto",
    **overrides: Any,
) -> nn.Module:
    """Load any supported checkpoint as a model.

    `num_classes` replaces the head (zero-initialised, as the official fine-tuning does) when it
    differs; `img_size` adapts the token mixing to a new resolution (`resize_token_mixing`);
    `overrides` set training-time options that the weights do not fix (drop_path_rate, act, ...).
    """
    size = to_2tuple(img_size) if img_size is not None else None
    model = load_model(src, size, **overrides)
    return adapt(model, src, num_classes, size, resize_method)


# The fields that fix a registered architecture; size, classes and training options may differ.
_STRUCTURE = ("patch_size", "in_chans", "embed_dim", "depth", "tokens_mlp_dim", "channels_mlp_dim", "num_heads",
              "mlp_dim")


def check_fits_name(name: str, cfg: MixerConfig | ViTConfig, src: str, overrides: dict[str, Any]) -> None:
    """Refuse a checkpoint whose architecture is not the registered `name` (with `overrides`)."""
    structural = {k: v for k, v in overrides.items() if k in _STRUCTURE}
    want = get_config(name, **structural)
    if want.arch != cfg.arch:
        raise CheckpointError(f"{src} holds a {cfg.arch} model, but {name!r} is a {want.arch}; "
                              f"use mixerlab.from_pretrained({str(src)!r}) to load it as it is")
    diff = [f"{k}={getattr(cfg, k)} (the name: {getattr(want, k)})"
            for k in _STRUCTURE if hasattr(want, k) and getattr(want, k) != getattr(cfg, k)]
    if diff:
        raise CheckpointError(f"{src} does not fit {name!r}: {', '.join(diff)}; use "
                              f"mixerlab.from_pretrained({str(src)!r}) to load it as it is")


def create_model(name: str, pretrained: str | os.PathLike | None = None, num_classes: int | None = None,
                 img_size: int | tuple[int, int] | None = None, resize_method: str = "auto",
                 features_only: bool = False, out_indices=(0, 1, 2, 3, 4), **overrides: Any) -> nn.Module:
    """A registered model, e.g. `create_model("mixer_b16_224", num_classes=10, img_size=384)`.

    `pretrained` is any source `from_pretrained` accepts; its architecture must be the named one
    (checked before the head or the resolution is changed). `features_only=True` returns, as timm
    does, a module whose forward gives the outputs of blocks `out_indices` (NCHW maps)."""
    if features_only:
        from ..models.features import FeatureGetter

        model = create_model(name, pretrained, num_classes, img_size, resize_method, **overrides)
        return FeatureGetter(model, tuple(out_indices) if not isinstance(out_indices, int) else out_indices)
    if pretrained is None:
        sized = {} if img_size is None else {"img_size": img_size}
        counted = {} if num_classes is None else {"num_classes": num_classes}
        return create_random_model(name, **sized, **counted, **overrides)
    size = to_2tuple(img_size) if img_size is not None else None
    heads = overrides.get("num_heads", getattr(get_config(name), "num_heads", None))
    model = load_model(pretrained, size, heads, **{k: v for k, v in overrides.items() if k not in _STRUCTURE})
    check_fits_name(name, model.config, str(pretrained), overrides)
    return adapt(model, pretrained, num_classes, size, resize_method)
