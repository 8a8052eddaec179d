"""Loading and saving weights in every format a user brings, detected from the content.

- official JAX/Flax `.npz` (vit_jax, big_vision), see `official.py`;
- timm state dicts (`.pth`, `.pt`, `.bin` through `torch.load(weights_only=True)`, or `.safetensors`);
- our own format: a folder with `model.safetensors` and `config.json` (`save_pretrained`), also
  found in the Hugging Face cache as "user/repo", offline;
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

from ..errors import CheckpointError
from ..io_utils import atomic_write, atomic_write_json
from ..models.config import MixerConfig, ViTConfig, config_from_dict
from ..models.layers import to_2tuple

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAIN_CKPT_NAMES = ("best.pt", "last.pt")


# --------------------------------------------------------------------------------------- reading
def detect_format(path: Path) -> str:
    """'mixerlab-dir', 'run-dir', 'npz', 'torch' or 'safetensors', from the bytes, not the name."""
    if path.is_dir():
        if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
            # timm's Hugging Face repos hold the same two names, with timm's config ("architecture")
            return "mixerlab-dir" if '"arch"' in (path / CONFIG_NAME).read_text() else "timm-dir"
        if any((path / n).is_file() for n in TRAIN_CKPT_NAMES):
            return "run-dir"
        raise CheckpointError(
            f"{path}: folder holds neither {WEIGHTS_NAME} + {CONFIG_NAME} nor a training checkpoint "
            f"({' or '.join(TRAIN_CKPT_NAMES)})"
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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and plain "
            f"containers, and mixerlab never unpickles code ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: cannot read torch checkpoint (truncated or corrupt?): {e}") from None


def _safetensors_load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file (truncated or corrupt?): {e}") from None


def _unwrap_state_dict(obj: Any, src: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """A plain state dict from what torch.load returned, and our config if the file carries one."""
    config = None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj.get("config"), dict):
        return obj["model"], {**obj["config"], "class_names": obj.get("classes")}  # a mixerlab training run
    for key in ("state_dict", "model", "model_ema", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{src}: not a state dict (expected a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj, config


def _infer_from_state_dict(sd: dict[str, torch.Tensor], src: str) -> MixerConfig | ViTConfig:
    """Config of a timm-named state dict (timm's mlp_mixer or vision_transformer) from its shapes."""

    def shape(k: str) -> tuple[int, ...]:
        if k not in sd:
            raise CheckpointError(f"{src}: missing key {k!r}")
        return tuple(sd[k].shape)

    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
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


def _split_class_names(d: dict) -> tuple[dict, list[str] | None]:
    d = dict(d)
    return d, d.pop("class_names", None)


def load_state_and_config(
    src: str | os.PathLike, img_size: tuple[int, int] | None = None
) -> tuple[dict[str, torch.Tensor], MixerConfig | ViTConfig, str, list[str] | None]:
    """Read any supported source into (state dict in our names, config, format name, class names)."""
    from . import official

    path = resolve_source(src)
    fmt = detect_format(path)
    if fmt == "timm-dir":
        path, fmt = path / WEIGHTS_NAME, "safetensors"
    if fmt == "run-dir":
        path = next(path / n for n in TRAIN_CKPT_NAMES if (path / n).is_file())
        fmt = "torch"
    if fmt == "npz":
        arrays = official.read_npz(path)
        cfg = official.infer_config(official.convert_pre_linen(arrays), str(path), img_size)
        return official.official_to_state_dict(arrays, cfg, str(path)), cfg, "official", None
    config = None
    if fmt == "mixerlab-dir":
        try:
            config = json.loads((path / CONFIG_NAME).read_text())
        except ValueError as e:
            raise CheckpointError(f"{path / CONFIG_NAME}: bad JSON: {e}") from None
        sd, _ = _safetensors_load(path / WEIGHTS_NAME)
    elif fmt == "safetensors":
        sd, meta = _safetensors_load(path)
        if "mixerlab_config" in meta:
            config = json.loads(meta["mixerlab_config"])
    else:
        sd, config = _unwrap_state_dict(_torch_load(path), str(path))
    if config is None:
        return sd, _infer_from_state_dict(sd, str(path)), "timm", None
    config, names = _split_class_names(config)
    try:
        return sd, config_from_dict(config), "mixerlab", names
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: bad model config: {e}") from None


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


def load_into(model: nn.Module, sd: dict[str, torch.Tensor], src: str) -> None:
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
    from ..models.registry import model_from_config
    from .resize import resize_token_mixing

    size = to_2tuple(img_size) if img_size is not None else None
    sd, cfg, fmt, class_names = load_state_and_config(src, size)
    try:
        cfg = cfg.replace(**overrides)
    except TypeError as e:
        raise ValueError(f"bad override for {cfg.arch}: {e}") from None
    with torch.device("meta"):  # skip the random init: every tensor is about to be replaced
        model = model_from_config(cfg)
    load_into(model, sd, str(src))
    model.class_names = class_names
    log.info("loaded %s (%s format): %s", src, fmt, cfg.arch)
    if num_classes is not None and num_classes != model.num_classes:
        log.warning(
            "%s: replacing the %d-class head with a zero-initialised %d-class head",
            src, model.num_classes, num_classes,
        )
        model.reset_classifier(num_classes)
        model.class_names = None
    if size is not None and size != tuple(model.config.img_size):
        if not isinstance(cfg, MixerConfig):
            raise ValueError("img_size changes are supported for MLP-Mixer checkpoints only")
        model = resize_token_mixing(model, size, method=resize_method)
    return model


# --------------------------------------------------------------------------------------- writing
def save_pretrained(model: nn.Module, save_directory: str | os.PathLike) -> Path:
    """Write `model.safetensors` (with the config in its metadata too) and `config.json`."""
    from safetensors.torch import save_file

    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg_json = json.dumps(model.config.to_dict(), sort_keys=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(sd, tmp, metadata={"mixerlab_config": cfg_json}))
    names = getattr(model, "class_names", None)
    atomic_write_json(out / CONFIG_NAME, {**model.config.to_dict(), **({"class_names": names} if names else {})})
    return out


def save_timm(model: nn.Module, path: str | os.PathLike) -> None:
    """A timm state dict (our parameter names are timm's), as .safetensors or torch .pth by suffix."""
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        atomic_write(path, lambda tmp: save_file(sd, tmp))
    else:
        atomic_write(path, lambda tmp: torch.save(sd, tmp))


class HubMixin:
    """`save_pretrained` / `from_pretrained` / `push_to_hub` on the model classes."""

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        return save_pretrained(self, save_directory)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, src: str | os.PathLike, **kwargs: Any) -> nn.Module:
        model = from_pretrained(src, **kwargs)
        if not isinstance(model, cls):
            raise CheckpointError(f"{src}: holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None) -> str:
        """Upload to the Hugging Face Hub (needs network and a token; never called in tests)."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return str(api.upload_folder(repo_id=repo_id, folder_path=tmp))
