"""What the Mixer and the ViT share: timm's classifier API, gradient checkpointing, and the model's
own saved form (`save_pretrained` / `from_pretrained` / `push_to_hub`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..errors import CheckpointError
from . import serialization
from .features import FeatureMixin


class ClassifierBase(FeatureMixin, nn.Module):
    """Subclasses set `config_class`, `config`, `blocks`, `norm` and `head` and call `_init_common` first."""

    config_class: ClassVar[type]

    def _init_common(self, cfg) -> None:
        self.config = cfg
        self.num_classes = cfg.num_classes
        self.num_features = self.embed_dim = cfg.embed_dim
        self.grad_checkpointing = False
        self.class_names: list[str] | None = None  # set when loaded from a checkpoint that names them

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a zero-initialised one, as the official fine-tuning does (0: no head,
        the pooled features come out). `global_pool` is timm's argument; only average pooling exists."""
        if global_pool not in (None, "", "avg", "token"):
            raise ValueError(f"global_pool={global_pool!r}: these models pool one way (mean over tokens, or "
                             "ViT's class token)")
        self.num_classes = num_classes
        self.config = self.config.replace(num_classes=num_classes)
        ref = next(self.parameters())  # the device and dtype of the model (its norm may be pruned)
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.Identity()

    def _run_block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One block, recomputed in the backward instead of stored when checkpointing is on."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = self._run_block(blk, x)
        return x

    # -- the model's own saved form -----------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """`model.safetensors` + `config.json` (with the class names when the model has them)."""
        return serialization.save_pretrained(self, save_directory)

    @classmethod
    def from_pretrained(cls, save_directory: str | os.PathLike, **overrides: Any) -> ClassifierBase:
        """Load a folder written by `save_pretrained`; `overrides` set training-time config options
        (drop_path_rate, ...). Official npz, timm files, training runs and the Hugging Face cache
        are read by `mixerlab.from_pretrained`, which also changes the head and the resolution."""
        path = Path(save_directory)
        if not (path.is_dir() and serialization.is_saved_model_dir(path)):
            raise CheckpointError(
                f"{path}: {cls.__name__}.from_pretrained reads folders written by save_pretrained; use "
                f"mixerlab.from_pretrained({str(path)!r}) for official npz, timm, run folders and the Hugging "
                f"Face cache"
            )
        sd, config = serialization.read_saved_model(path)
        class_names = config.pop("class_names", None)
        try:
            cfg = cls.config_class.from_dict(config).replace(**overrides)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: holds no {cls.__name__}: {e}") from None
        with torch.device("meta"):  # every tensor is about to be replaced: skip the random init
            model = cls(cfg)
        serialization.load_into(model, sd, str(path))
        model.class_names = class_names
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
