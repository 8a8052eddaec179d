"""The paper's recipes as presets, and how a run's config is resolved from a preset, a config file
and command-line flags (in increasing priority)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import TrainConfig

# The paper's recipes (Section 3 and Appendix B), scaled to what a 2-core CPU can run. Every value is
# also a flag and a config-file key.
RECIPES: dict[str, dict[str, Any]] = {
    # Pre-training: Adam(0.9, 0.999), linear warmup then decay, weight decay, clipping at global norm
    # 1, RandAugment, mixup, stochastic depth, label smoothing.
    "scratch": dict(optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="cosine", warmup_epochs=1.0,
                    clip_grad=1.0, label_smoothing=0.1, mixup=0.0, randaug_n=0, drop_path_rate=0.0),
    # The demo: the most Fashion-MNIST accuracy we found for about 10 minutes on 2 CPU cores
    # (docs/results.md). A Mixer with 4x4 patches (49 tokens) and D_C = 2C; exact GELU, because the
    # tanh form costs twice as much in bf16 on CPUs and this model is trained from scratch; random
    # crops slow short runs, so only flips are kept. Muon for the hidden matrices instead of the
    # paper's AdamW: it gets further in few epochs, and its dearer step is paid for with 8 epochs.
    "demo": dict(model="mixer_nano", model_args=dict(patch_size=4, depth=6, channels_mlp_dim=256, act="gelu"),
                 optimizer="muon", lr=1e-2, weight_decay=0.05, schedule="cosine", warmup_epochs=0.5,
                 clip_grad=1.0, label_smoothing=0.1, crop_pad=0, flip=True, epochs=8, batch_size=128),
    # Fine-tuning: SGD with momentum 0.9, cosine decay with warmup, no weight decay, clipping at 1,
    # head replaced (zero-initialised).
    "finetune": dict(optimizer="sgd", lr=0.03, momentum=0.9, weight_decay=0.0, schedule="cosine",
                     warmup_epochs=0.5, clip_grad=1.0, label_smoothing=0.0, mixup=0.0, randaug_n=0,
                     drop_path_rate=0.0, epochs=5, batch_size=64),
}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml), TOML (.toml) or JSON file of TrainConfig keys."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        d = yaml.safe_load(text) or {}
    elif path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib

        d = tomllib.loads(text)
    else:
        d = json.loads(text)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping of training options")
    return {k.replace("-", "_"): v for k, v in d.items()}


def resolve(recipe: str = "scratch", file: str | None = None, **flags: Any) -> TrainConfig:
    """Preset, then file, then flags (flags that are None are left to the others)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    d: dict[str, Any] = {"recipe": recipe, **RECIPES[recipe]}
    if file:
        from_file = read_config_file(file)
        if "recipe" in from_file and from_file["recipe"] != recipe:
            d = {"recipe": from_file["recipe"], **RECIPES[from_file["recipe"]]}
        d.update(from_file)
    d.update({k: v for k, v in flags.items() if v is not None})
    return TrainConfig.from_dict(d)
