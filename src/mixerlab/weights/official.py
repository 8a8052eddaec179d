"""Google's official MLP-Mixer checkpoints (`vit_jax`, big_vision): np.savez files of '/'-joined Flax
parameter names. Read into, and written from, our (timm-named) state dicts."""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Mapping

import numpy as np
import torch

from ..errors import CheckpointError
from ..io_utils import atomic_write_bytes
from ..models.config import MixerConfig
from . import npz

_BLOCK_RE = re.compile(r"^MixerBlock_(\d+)/")
_MODULE_NUM_RE = re.compile(r"^(.*)_\d+$")


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def convert_pre_linen(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renumber pre-Linen names the way `flax.training.checkpoints.convert_pre_linen` does.

    Pre-Linen Flax numbered submodules in one sequence per parent (LayerNorm_0, token_mixing,
    LayerNorm_2, ...); Linen counts each module class separately (LayerNorm_0, LayerNorm_1). At every
    level of the tree, names ending in _N are renumbered per prefix in natural order. Linen names
    come out unchanged.
    """
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    def rename(node: dict) -> dict:
        out, counts = {}, {}
        for name in sorted(node, key=_natural_key):
            child = node[name]
            if not isinstance(child, dict):
                out[name] = child  # leaves (kernel, bias, scale) keep their names
                continue
            m = _MODULE_NUM_RE.match(name)
            if m:
                num = counts.get(m.group(1), 0)
                counts[m.group(1)] = num + 1
                name = f"{m.group(1)}_{num}"
            out[name] = rename(child)
        return out

    result: dict[str, np.ndarray] = {}

    def flatten(node: dict, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                flatten(v, f"{prefix}{k}/")
            else:
                result[f"{prefix}{k}"] = v

    flatten(rename(tree), "")
    return result


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an .npz without unpickling anything, each header checked before its data
    (npz.py); errors name the file."""
    return npz.read(path, npz.scan(path))


def _get(arrays: Mapping[str, np.ndarray], key: str, src: str) -> np.ndarray:
    if key not in arrays:
        raise CheckpointError(f"{src}: missing key {key!r} (not an MLP-Mixer checkpoint?)")
    return arrays[key]


def infer_config(
    arrays: Mapping[str, np.ndarray], src: str = "checkpoint", img_size: tuple[int, int] | None = None
) -> MixerConfig:
    """The whole config from the shapes. The token grid is taken square unless `img_size` says
    otherwise (an official checkpoint stores S, not H and W)."""
    stem = _get(arrays, "stem/kernel", src)
    if stem.ndim != 4 or stem.shape[0] != stem.shape[1]:
        raise CheckpointError(f"{src}: key 'stem/kernel' should be [P, P, C_in, C], found {list(stem.shape)}")
    p, _, in_chans, c = stem.shape
    depth = len({int(m.group(1)) for k in arrays if (m := _BLOCK_RE.match(k))})
    if depth == 0:
        raise CheckpointError(f"{src}: no 'MixerBlock_*' keys: not an MLP-Mixer checkpoint")
    s, ds = _get(arrays, "MixerBlock_0/token_mixing/Dense_0/kernel", src).shape
    dc = _get(arrays, "MixerBlock_0/channel_mixing/Dense_0/kernel", src).shape[1]
    num_classes = arrays["head/kernel"].shape[1] if "head/kernel" in arrays else 0
    if img_size is None or (img_size[0] // p) * (img_size[1] // p) != s:
        g = math.isqrt(s)
        if g * g != s:
            raise CheckpointError(
                f"{src}: {s} tokens is not a square grid; pass img_size=(H, W) with "
                f"(H/{p})*(W/{p}) = {s}"
            )
        img_size = (g * p, g * p)
    return MixerConfig(
        img_size=img_size, patch_size=int(p), in_chans=int(in_chans), num_classes=int(num_classes),
        embed_dim=int(c), tokens_mlp_dim=int(ds), channels_mlp_dim=int(dc), depth=depth,
    )


def _mapping(cfg: MixerConfig) -> list[tuple[str, str, str]]:
    """(official key, our key, how to convert) for every parameter."""
    rows = [("stem/kernel", "stem.proj.weight", "conv"), ("stem/bias", "stem.proj.bias", "")]
    for i in range(cfg.depth):
        o, t = f"MixerBlock_{i}/", f"blocks.{i}."
        for j, norm in enumerate(("norm1", "norm2")):
            rows += [(f"{o}LayerNorm_{j}/scale", f"{t}{norm}.weight", ""),
                     (f"{o}LayerNorm_{j}/bias", f"{t}{norm}.bias", "")]
        for mlp_o, mlp_t in (("token_mixing", "mlp_tokens"), ("channel_mixing", "mlp_channels")):
            for j in range(2):
                rows += [(f"{o}{mlp_o}/Dense_{j}/kernel", f"{t}{mlp_t}.fc{j + 1}.weight", "dense"),
                         (f"{o}{mlp_o}/Dense_{j}/bias", f"{t}{mlp_t}.fc{j + 1}.bias", "")]
    rows += [("pre_head_layer_norm/scale", "norm.weight", ""), ("pre_head_layer_norm/bias", "norm.bias", "")]
    if cfg.num_classes > 0:
        rows += [("head/kernel", "head.weight", "dense"), ("head/bias", "head.bias", "")]
    return rows


def _to_torch(a: np.ndarray, how: str) -> torch.Tensor:
    if how == "conv":
        a = a.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif how == "dense":
        a = a.T  # [in, out] -> [out, in]
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _to_numpy(t: torch.Tensor, how: str) -> np.ndarray:
    a = t.detach().to("cpu", torch.float32).numpy()
    if how == "conv":
        a = a.transpose(2, 3, 1, 0)
    elif how == "dense":
        a = a.T
    return np.ascontiguousarray(a)


def check_keys_and_shapes(arrays: Mapping, cfg: MixerConfig, expected: Mapping[str, torch.Size],
                          src: str = "checkpoint") -> None:
    """Every official key `cfg` needs, no other, each of the shape `expected` (our name -> shape) says.
    Works on arrays or on npz headers alike (anything with `.shape`), so it can run before any data."""
    rows = _mapping(cfg)
    missing = [o for o, _, _ in rows if o not in arrays]
    if missing:
        raise CheckpointError(f"{src}: missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    extra = sorted(set(arrays) - {o for o, _, _ in rows})
    if extra:
        raise CheckpointError(f"{src}: unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    for o, t, how in rows:
        want = list(_official_shape(expected[t], how))
        if list(arrays[o].shape) != want:
            raise CheckpointError(f"{src}: key {o!r} has shape {list(arrays[o].shape)}, expected {want}")


def _official_shape(shape: torch.Size, how: str) -> tuple[int, ...]:
    if how == "conv":  # OIHW -> HWIO
        return (shape[2], shape[3], shape[1], shape[0])
    return tuple(reversed(shape)) if how == "dense" else tuple(shape)


def official_to_state_dict(
    arrays: Mapping[str, np.ndarray], cfg: MixerConfig, expected: Mapping[str, torch.Size],
    src: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Map official arrays onto our names, checking every key against `cfg` and every shape against
    `expected` (our name -> shape, e.g. a model's state dict), so errors name the official key."""
    arrays = convert_pre_linen(arrays)
    check_keys_and_shapes(arrays, cfg, expected, src)
    return {t: _to_torch(arrays[o], how) for o, t, how in _mapping(cfg)}


def state_dict_to_official(sd: Mapping[str, torch.Tensor], cfg: MixerConfig) -> dict[str, np.ndarray]:
    return {o: _to_numpy(sd[t], how) for o, t, how in _mapping(cfg)}


def save_official(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Write an official-format .npz (uncompressed np.savez, as `vit_jax` does), atomically."""
    arrays = state_dict_to_official(model.state_dict(), model.config)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
