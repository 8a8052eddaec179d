"""What the Mixer and the ViT share: timm's classifier API, gradient checkpointing, the hub methods."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..weights.hub import HubMixin


class ClassifierBase(nn.Module, HubMixin):
    """Subclasses set `config`, `blocks`, `norm` and `head` and call `_init_common` first."""

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

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a zero-initialised one, as the official fine-tuning does."""
        self.num_classes = num_classes
        self.config = self.config.replace(num_classes=num_classes)
        ref = self.norm.weight
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.Identity()

    def _run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
            return x
        return self.blocks(x)
