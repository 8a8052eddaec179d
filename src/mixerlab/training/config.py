"""Training configuration: every knob of the trainer in one dataclass, saved with each run as
`config.json` and in every checkpoint."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..models.config import check_known_keys

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
    img_size: int | None = None  # resize the data (ImageFolder) or the model (fine-tuning) to this
    val_split: float = 0.1
    recipe: str = "scratch"
    # optimisation
    epochs: int = 10
    batch_size: int = 128  # per process; the global batch is batch_size * world_size * accum_steps
    accum_steps: int = 1
    optimizer: str = "adamw"  # adamw | sgd | muon (Muon for the hidden matrices, AdamW for the rest)
    lr: float = 2e-3  # for the global batch
    min_lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    weight_decay: float = 0.05
    schedule: str = "cosine"  # cosine | linear
    warmup_epochs: float = 1.0
    clip_grad: float = 1.0
    label_smoothing: float = 0.1
    # regularisation and augmentation
    mixup: float = 0.0
    randaug_n: int = 0
    randaug_m: int = 9
    crop_pad: int = 2
    flip: bool = True
    drop_path_rate: float = 0.0  # the model's stochastic depth at the last layer
    drop_rate: float = 0.0  # the model's dropout before the head
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0 turns it off
    # mechanics
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"
    seed: int = 0
    eval_batch_size: int = 512
    max_steps_per_epoch: int | None = None  # for smoke tests
    strict: bool = False  # fail on corrupt images instead of skipping them
    quiet: bool = False
    out: str = "runs/latest"

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
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


# The string options that take one of a few values: the CLI offers them as choices, so a typo fails
# before any data is loaded.
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adamw", "sgd", "muon"),
    "schedule": ("cosine", "linear"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
}
