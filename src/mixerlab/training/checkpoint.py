"""Training checkpoints on disk: written atomically, read with `weights_only=True`, and recognised by
their format tag. What goes into one is `Run.state_dict()` (loop.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import TrainingError
from ..io_utils import atomic_write

CHECKPOINT_FORMAT = "mixerlab-train-v1"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no checkpoint to resume from") from None
    except Exception as e:
        raise TrainingError(f"{path}: cannot read checkpoint (truncated or corrupt?): {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a mixerlab training checkpoint")
    return ckpt
