"""Model configurations: plain dataclasses that fully describe a model and round-trip through JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError
from ..validation import Rule, at_least, check_fields, check_known_keys, fraction, validate
from .layers import ACTIVATIONS

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass
class _Config:
    """What every model config holds besides its architecture: the preprocessing its weights expect
    (timm's `pretrained_cfg` fields), so that it travels with the weights."""

    arch: ClassVar[str] = ""
    RULES: ClassVar[dict[str, Rule]] = {}
    mean: tuple[float, ...] = (0.5,)  # per input channel, or one value for all
    std: tuple[float, ...] = (0.5,)
    interpolation: str = "bicubic"  # how an image of another size is resized to the input size
    crop_pct: float = 0.875  # resize the shorter side to input / crop_pct, then centre-crop the input

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)  # type: ignore[attr-defined]
        return {"arch": self.arch, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _Config:
        d = dict(d)
        arch = d.pop("arch", cls.arch)
        if arch != cls.arch:
            raise ConfigError(f"config is for arch {arch!r}, not {cls.arch!r}")
        check_known_keys(cls, d, f"{cls.arch} config")
        if "crop_pct" not in d and "interpolation" not in d:
            # Saved before preprocessing was part of the config: mixerlab then resized whole images
            # (bilinear, no crop); keep doing that for those files.
            d.update(interpolation="bilinear", crop_pct=1.0)
        return cls(**d)

    def replace(self, **overrides: Any) -> _Config:
        return dataclasses.replace(self, **overrides)

    @property
    def grid_size(self) -> tuple[int, int]:
        h, w = self.img_size  # type: ignore[attr-defined]
        p = self.patch_size  # type: ignore[attr-defined]
        return (h // p, w // p)

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    def preprocess(self) -> dict[str, Any]:
        """What an image goes through before the model: the fields timm calls its `pretrained_cfg`."""
        return {"mean": list(self.mean), "std": list(self.std), "input_size": [self.in_chans, *self.img_size],  # type: ignore[attr-defined]
                "interpolation": self.interpolation, "crop_pct": self.crop_pct}

    @classmethod
    def check_overrides(cls, d: dict[str, Any]) -> dict[str, Any]:
        """Some options (`--model-arg`s, say) checked one by one, before any model is built."""
        return check_fields(cls, d, f"{cls.arch} model option", cls.RULES)

    def _check_common(self) -> None:
        if isinstance(self.img_size, int) and not isinstance(self.img_size, bool):
            self.img_size = (self.img_size, self.img_size)  # type: ignore[assignment]
        validate(self, f"{self.arch} model option", self.RULES)
        chans = self.in_chans  # type: ignore[attr-defined]
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, chans):
                raise ConfigError(f"{self.arch} model option {name!r}: {list(values)} has {len(values)} values; "
                                  f"give 1 or in_chans = {chans}")
        h, w = self.img_size  # type: ignore[attr-defined]
        p = self.patch_size  # type: ignore[attr-defined]
        if h % p or w % p:
            raise ConfigError(
                f"img_size {h}x{w} is not divisible by patch_size {p}: "
                f"the image must tile into whole {p}x{p} patches"
            )


# What every model config allows; each class adds its own.
_COMMON_RULES = {
    "img_size": at_least(1), "patch_size": at_least(1), "in_chans": at_least(1), "num_classes": at_least(0),
    "embed_dim": at_least(1), "depth": at_least(1), "drop_rate": fraction(), "drop_path_rate": fraction(),
    "act": Rule(choices=ACTIVATIONS), "norm_eps": Rule(lo=0.0, lo_open=True),
    "std": Rule(lo=0.0, lo_open=True), "interpolation": Rule(choices=INTERPOLATIONS),
    "crop_pct": Rule(0.0, 1.0, lo_open=True),
}


@dataclass
class MixerConfig(_Config):
    """An MLP-Mixer. Names follow timm; the paper's symbols are in the comments."""

    arch: ClassVar[str] = "mixer"
    RULES: ClassVar[dict[str, Rule]] = {**_COMMON_RULES, "tokens_mlp_dim": at_least(1),
                                        "channels_mlp_dim": at_least(1), "init": Rule(choices=("jax", "timm"))}
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16  # P
    in_chans: int = 3
    num_classes: int = 1000  # 0: the model returns pooled features
    embed_dim: int = 768  # C, hidden channels
    tokens_mlp_dim: int = 384  # D_S
    channels_mlp_dim: int = 3072  # D_C
    depth: int = 12  # N, number of Mixer layers
    drop_rate: float = 0.0  # dropout before the head
    drop_path_rate: float = 0.0  # stochastic depth at the last layer, rising linearly from 0
    act: str = "gelu_tanh"
    norm_eps: float = 1e-6
    init: str = "jax"  # "jax" (official Flax module) or "timm"

    def __post_init__(self) -> None:
        self._check_common()


@dataclass
class ViTConfig(_Config):
    """The paper's baseline: a pre-LN Vision Transformer with a class token (timm's vit_*_patch*_224)."""

    arch: ClassVar[str] = "vit"
    RULES: ClassVar[dict[str, Rule]] = {**_COMMON_RULES, "num_heads": at_least(1), "mlp_dim": at_least(1)}
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    act: str = "gelu"
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        self._check_common()
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")


CONFIG_CLASSES: dict[str, type[_Config]] = {"mixer": MixerConfig, "vit": ViTConfig}


def config_from_dict(d: dict[str, Any]) -> MixerConfig | ViTConfig:
    arch = d.get("arch", "mixer")
    if arch not in CONFIG_CLASSES:
        raise ConfigError(f"unknown arch {arch!r} in config; known: {sorted(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[arch].from_dict(d)  # type: ignore[return-value]


def class_names_problem(names: Any, num_classes: int) -> str | None:
    """What is wrong with `names` as the class names of a model of `num_classes` classes (None: they
    fit, or there are none): one wording for checkpoints and exported files alike."""
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return f"'class_names' must be a list of strings or null, found {str(names)[:100]!r}"
    if len(names) != num_classes:
        return (f"'class_names' lists {len(names)} name{'s' if len(names) != 1 else ''} for a model of {num_classes} "
                f"classes (num_classes)")
    return None
