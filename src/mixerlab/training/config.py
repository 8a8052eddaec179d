"""Training configuration: every knob of the trainer in one dataclass, saved with each run as
`config.json` and in every checkpoint."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..models.config import CONFIG_CLASSES
from ..models.registry import get_config, list_models
from ..perf.runtime import PRECISIONS
from ..validation import Rule, at_least, check_known_keys, fraction, validate

# What may change when a run is resumed: how long it trains and where and how it runs, never what it
# learns from or how (that would not continue the same run).
RESUMABLE = ("epochs", "max_steps", "quiet", "device", "eval_batch_size", "data_dir", "strict", "compile")

# Old option names, still read: the same names as the model config's now.
RENAMED = {"drop_path": "drop_path_rate", "dropout": "drop_rate"}


@dataclass
class TrainConfig:
    # what to train
    data: str = "fashion-mnist"
    data_dir: str | None = None
    model: str = "auto"  # a registered name; "auto" picks a small Mixer that fits the data
    model_args: dict[str, Any] = field(default_factory=dict)  # config overrides (depth, embed_dim, ...)
    pretrained: str | None = None  # any from_pretrained source; the head is replaced
    stem_init: str = "default"  # default | whiten: the stem from the training patches' whitened covariance
    img_size: int | None = None  # the model's input: folders are decoded at it, built-in sets resized to it as fed
    val_split: float = 0.1  # held out of the training images to choose best.pt on (0: none; keep the last epoch)
    val_data: str | None = None  # validation shards (default: those dataset.json lists beside the training ones)
    stream: bool | None = None  # read images from disk as it trains; None: when they would not fit in memory
    workers: int | None = None  # decoding processes when streaming (None: the cores less one, up to 8)
    memory_budget_gb: float | None = None  # above this a folder streams (None: half the available memory)
    recipe: str = "auto"
    # optimisation
    epochs: int | None = None  # None: from the dataset's size (training/auto.py); with time_budget, the most
    max_steps: int | None = None  # optimiser steps in all: the last epoch is cut short there, and the schedule ends
    time_budget: float | None = None  # seconds of training: as many steps as fit here (training/budget.py)
    batch_size: int = 128  # per process; the global batch is batch_size * world_size * accum_steps
    accum_steps: int = 1
    optimizer: str = "adamw"  # adamw | sgd | muon (Muon for the hidden matrices, AdamW for the rest)
    lr: float = 2e-3  # for the global batch
    min_lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    weight_decay: float = 0.05
    schedule: str = "cosine"  # cosine | linear
    warmup_epochs: float | None = None  # None: a share of the run's steps (training/auto.py)
    clip_grad: float = 1.0
    label_smoothing: float = 0.1
    # regularisation and augmentation
    mixup: float = 0.0
    randaug_n: int = 0
    randaug_m: int = 9
    random_erase: float = 0.0  # probability of erasing a random rectangle of each training image with noise
    crop_pad: int = 2  # in memory: pad and crop back
    crop_scale: float = 0.08  # streaming: the smallest area of a random resized crop (the paper's Inception crop)
    flip: bool | None = None  # None: on for built-in sets known to be mirror-invariant, else off
    drop_path_rate: float = 0.0  # the model's stochastic depth at the last layer
    drop_rate: float = 0.0  # the model's dropout before the head
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0 turns it off
    # mechanics
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the training step's model: fused GELU, LayerNorm and casts
    device: str = "auto"
    seed: int = 0
    eval_batch_size: int = 512
    max_steps_per_epoch: int | None = None  # for smoke tests
    strict: bool = False  # fail on corrupt images instead of skipping them
    quiet: bool = False
    out: str | None = None  # None: a new folder runs/<date>-<time>-<model>, with runs/latest pointing at it

    def __post_init__(self) -> None:
        validate(self, "training option", RULES)
        if self.model != "auto" and self.model not in list_models():
            raise ConfigError(f"training option 'model': {self.model!r} is not a registered model; allowed: auto, "
                              f"{', '.join(list_models())}")
        if self.model_args and not self.pretrained:
            arch = "mixer" if self.model == "auto" else get_config(self.model).arch
            try:
                self.model_args = CONFIG_CLASSES[arch].check_overrides(self.model_args)
            except ConfigError as e:
                raise ConfigError(f"training option 'model_args' (--model-arg): {e}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        for old, new in RENAMED.items():  # config files and runs written before 0.2
            if old in d:
                warnings.warn(f"training option {old!r} is now {new!r}", DeprecationWarning, stacklevel=2)
                d.setdefault(new, d.pop(old))
        check_known_keys(cls, d, "training config")
        return cls(**d)  # __post_init__ checks every value (a list of betas becomes a tuple there)


# The string options that take one of a few values: the CLI offers them as choices too.
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adamw", "sgd", "muon"),
    "schedule": ("cosine", "linear"),
    "precision": PRECISIONS,
    "stem_init": ("default", "whiten"),
}

# Ranges of the numeric options, checked whenever a TrainConfig is made (flags, files, resumed runs).
RULES: dict[str, Rule] = {
    **{k: Rule(choices=v) for k, v in CHOICES.items()},
    "img_size": at_least(1), "val_split": Rule(0.0, 1.0, hi_open=True), "epochs": at_least(1),
    "batch_size": at_least(1), "accum_steps": at_least(1), "lr": Rule(lo=0.0, lo_open=True), "min_lr": at_least(0),
    "betas": fraction(), "momentum": fraction(), "weight_decay": at_least(0), "warmup_epochs": at_least(0),
    "clip_grad": at_least(0), "label_smoothing": fraction(), "mixup": at_least(0), "randaug_n": at_least(0),
    "randaug_m": Rule(0, 30), "random_erase": fraction(hi_open=False), "crop_pad": at_least(0),
    "crop_scale": Rule(0.0, 1.0, lo_open=True), "workers": at_least(0), "memory_budget_gb": Rule(lo=0.0, lo_open=True),
    "drop_path_rate": fraction(), "drop_rate": fraction(),
    "ema": fraction(), "seed": at_least(0), "eval_batch_size": at_least(1), "max_steps_per_epoch": at_least(1),
    "max_steps": at_least(1), "time_budget": Rule(lo=0.0, lo_open=True),
}
