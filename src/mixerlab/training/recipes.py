"""The paper's recipes as presets, and how a run's config is resolved from a preset, a config file
and command-line flags (in increasing priority)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import TrainConfig

# The paper's recipes (Section 3 and Appendix B), scaled to what a 2-core CPU can run. Every value is
# also a flag and a config-file key.
RECIPES: dict[str, dict[str, Any]] = {
    # The default: what `mixerlab train --data X` does with no other flag. Length, warmup and flips
    # come from the data (auto.py); Muon, because it gets furthest in short runs (docs/results.md).
    "auto": dict(optimizer="muon", lr=1e-2, weight_decay=0.05, schedule="cosine", clip_grad=1.0,
                 label_smoothing=0.1, crop_pad=2),
    # Pre-training: Adam(0.9, 0.999), linear warmup then decay, weight decay, clipping at global norm
    # 1, RandAugment, mixup, stochastic depth, label smoothing.
    "scratch": dict(optimizer="adamw", lr=2e-3, weight_decay=0.05, schedule="cosine", warmup_epochs=1.0,
                    clip_grad=1.0, label_smoothing=0.1, mixup=0.0, randaug_n=0, drop_path_rate=0.0, epochs=10,
                    flip=True, crop_pad=2),
    # The demo: the most Fashion-MNIST accuracy we found for about 10 minutes on 2 CPU cores
    # (docs/results.md). It trains on all 60,000 training images and keeps its last epoch (nothing is
    # chosen, so the test figure it reports is honest without a validation split). A Mixer with 4x4
    # patches (49 tokens) and D_C = 2C; exact GELU, because the tanh form costs twice as much in bf16
    # on CPUs and this model is trained from scratch; random crops slow short runs, so only flips are
    # kept. Muon for the hidden matrices instead of the paper's AdamW: it gets further in few epochs,
    # and its dearer step is paid for with 8 epochs.
    "demo": dict(model="mixer_nano", model_args=dict(patch_size=4, depth=6, channels_mlp_dim=256, act="gelu"),
                 optimizer="muon", lr=1e-2, weight_decay=0.05, schedule="cosine", warmup_epochs=0.5,
                 clip_grad=1.0, label_smoothing=0.1, crop_pad=0, flip=True, epochs=8, batch_size=128,
                 val_split=0.0),
    # Time to accuracy on 28 x 28 images (Fashion-MNIST, MNIST): the most test accuracy we found for
    # 60 s of training on 2 CPU cores (docs/results.md). As many steps as fit in 60 s on the machine at
    # hand (one epoch on an AMD Zen 3, three on a Zen 4 or a Xeon without AMX, five with AMX), over all
    # 60,000 images, no selection (the last step is the model, as airbench does); 7x7 patches (16 tokens) keep the step
    # cheap; the stem starts from the whitened patch covariance; flips from the data (`auto`), so off
    # in a run of under two epochs, where they cost more accuracy than they add.
    "speedrun": dict(model="mixer_pico", model_args=dict(patch_size=7, depth=4, channels_mlp_dim=256, act="gelu"),
                     stem_init="whiten", optimizer="muon", lr=1e-2, weight_decay=0.05, schedule="linear",
                     warmup_epochs=0.1, min_lr=0.0, clip_grad=1.0, label_smoothing=0.2, crop_pad=0, flip=None,
                     time_budget=60.0, batch_size=256, val_split=0.0),
    # The most Fashion-MNIST accuracy we aim for on 2 CPU cores in a few hours: the demo's Mixer
    # (mixer_pico) and Muon for 100 epochs, regularised for the length: 2-pixel crops, flips, random
    # erasing of a quarter of the images. A seeded tenth of the training images is held out and chooses
    # best.pt; the test images score only the model kept. Stop it and go on with --resume.
    "best": dict(model="mixer_pico", optimizer="muon", lr=1e-2, weight_decay=0.05, schedule="cosine",
                 warmup_epochs=1.0, clip_grad=1.0, label_smoothing=0.1, crop_pad=2, flip=True, random_erase=0.25,
                 epochs=100, batch_size=128, val_split=0.1),
    # Fine-tuning: SGD with momentum 0.9, cosine decay with warmup, no weight decay, clipping at 1,
    # head replaced (zero-initialised).
    "finetune": dict(optimizer="sgd", lr=0.03, momentum=0.9, weight_decay=0.0, schedule="cosine",
                     warmup_epochs=0.5, clip_grad=1.0, label_smoothing=0.0, mixup=0.0, randaug_n=0,
                     drop_path_rate=0.0, epochs=5, batch_size=64, flip=True),
}


# Recipes whose model and length were fitted to 28 x 28 grey images: on others they would train a model
# that is wrong for them (thousands of tokens from a 224 px photo), so they are refused.
SMALL_GREY_ONLY = {"speedrun": "a Mixer with 7x7 patches, one epoch", "best": "a Mixer with 4x4 patches, 100 epochs"}


def check_recipe_data(recipe: str, data_name: str, in_chans: int, img_size: tuple[int, int]) -> None:
    if recipe in SMALL_GREY_ONLY and (tuple(img_size) != (28, 28) or in_chans != 1):
        raise ConfigError(f"--recipe {recipe} is made for 28x28 grey images (Fashion-MNIST, MNIST: "
                          f"{SMALL_GREY_ONLY[recipe]}); {data_name} has {in_chans} x {img_size[0]} x {img_size[1]} "
                          "images. Use the default recipe (auto) for them")


def _parse(path: Path, text: str) -> Any:
    """The file's content by its suffix; a syntax error names the file and the place."""
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            return tomllib.loads(text)
        if path.suffix == ".json":
            return json.loads(text)
    except Exception as e:  # yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError
        where = str(e).strip().replace("\n", " ")
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {where}") from None
    raise ConfigError(f"{path}: unknown config file type {path.suffix!r}; use .yaml, .yml, .toml or .json")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file of TrainConfig keys."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from None
    d = _parse(path, text)
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of training options (KEY: VALUE lines)")
    return {str(k).replace("-", "_"): v for k, v in d.items()}


def resolve(recipe: str | None = None, file: str | None = None, **flags: Any) -> TrainConfig:
    """Preset, then file, then flags (flags that are None are left to the others). A `recipe:` key in
    the file picks the preset, else `recipe`, else "auto"."""
    from_file = read_config_file(file) if file else {}
    name = from_file.get("recipe", recipe or "auto")
    if not isinstance(name, str) or name not in RECIPES:
        where = f"{file}: " if "recipe" in from_file else ""
        raise ConfigError(f"{where}unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}")
    given = {**from_file, **{k: v for k, v in flags.items() if v is not None}}
    if given.get("time_budget") is not None and given.get("max_steps") is not None:
        raise ConfigError("--time-budget and --max-steps both set the run's length; give one of them")
    if not isinstance(from_file.get("model_args", {}), dict):
        raise ConfigError(f"{file}: model_args must be a mapping of model config keys (KEY: VALUE lines), "
                          f"not {from_file['model_args']!r}")
    d: dict[str, Any] = {**RECIPES[name], **given, "recipe": name}
    if isinstance(given.get("model_args"), dict) and d.get("model") == RECIPES[name].get("model", "auto"):
        # --model-arg changes one argument of the recipe's model, not the whole of them; a model of the
        # user's own takes none of the recipe's (they describe the recipe's)
        d["model_args"] = {**RECIPES[name].get("model_args", {}), **from_file.get("model_args", {}),
                           **given["model_args"]}
    if "time_budget" not in given and ("epochs" in given or "max_steps" in given):
        d["time_budget"] = None  # a length given by the user replaces the recipe's budget
    return TrainConfig.from_dict(d)
