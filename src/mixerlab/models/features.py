"""timm's feature API on our models: `forward_intermediates`, `prune_intermediate_layers`, and the
module `create_model(name, features_only=True, out_indices=...)` returns, with timm's argument meanings
(timm's `feature_take_indices` and `FeatureGetterNet`), so code written against timm's MlpMixer or
VisionTransformer runs on ours unchanged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

Indices = int | Sequence[int] | None


def take_indices(num_blocks: int, indices: Indices) -> tuple[list[int], int]:
    """(absolute block indices, the largest): None -> all blocks, an int n -> the last n, a sequence ->
    those blocks (negative ones count from the end)."""
    if indices is None:
        indices = num_blocks
    if isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"indices={indices}: last-n must be in 1..{num_blocks} (the model's blocks)")
        taken = list(range(num_blocks - indices, num_blocks))
    else:
        taken = [i + num_blocks if i < 0 else i for i in indices]
        bad = [i for i, t in zip(indices, taken) if not 0 <= t < num_blocks]
        if bad or not taken:
            raise ValueError(f"indices={list(indices)}: each must be a block in 0..{num_blocks - 1} "
                             f"(or -{num_blocks}..-1)")
    return taken, max(taken)


class FeatureMixin:
    """What a model needs for it: `blocks`, `norm`, `config.grid_size`, `num_prefix_tokens`, and
    `_embed(x)` / `_to_nlc(x)` between the input, its blocks' own layout and (B, L, C)."""

    num_prefix_tokens = 0

    def forward_intermediates(self, x: torch.Tensor, indices: Indices = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              return_prefix_tokens: bool = False):
        """Block outputs (`indices` as in timm), NCHW feature maps over the patch grid or NLC tokens
        (prefix tokens such as ViT's class token left out, or paired with them by
        `return_prefix_tokens`); `norm` passes each through the final LayerNorm. Returns the list, or
        (final normalised tokens (B, L, C), the list)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}: must be 'NCHW' or 'NLC'")
        taken, last = take_indices(len(self.blocks), indices)
        b = x.shape[0]
        x = self._embed(x)
        out = []
        for i, blk in enumerate(self.blocks[:last + 1] if stop_early else self.blocks):
            x = self._run_block(blk, x)
            if i in taken:
                out.append(self._to_nlc(self.norm(x) if norm else x))
        p = self.num_prefix_tokens
        prefix = [y[:, :p] for y in out] if p else None
        out = [y[:, p:] for y in out]
        if output_fmt == "NCHW":
            gh, gw = self.config.grid_size
            out = [y.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous() for y in out]
        if return_prefix_tokens and prefix is not None:
            out = list(zip(out, prefix))
        if intermediates_only:
            return out
        return self._to_nlc(self.norm(x)), out

    def prune_intermediate_layers(self, indices: Indices = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last one `indices` needs (and the final norm and the head, when
        asked); returns the absolute indices kept."""
        taken, last = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return taken


class FeatureInfo(list):
    """One dict per output (num_chs, reduction, module), with timm's `channels()` and `reduction()`."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]


class FeatureGetter(nn.Module):
    """`create_model(..., features_only=True)`: forward gives the list of the chosen blocks' outputs as
    NCHW maps (or NLC tokens), the model pruned after the last of them, as timm's FeatureGetterNet."""

    def __init__(self, model: nn.Module, out_indices: Indices = (0, 1, 2, 3, 4), output_fmt: str = "NCHW",
                 norm: bool = False):
        super().__init__()
        if out_indices == (0, 1, 2, 3, 4) and len(model.blocks) < 5:  # timm's default, on fewer blocks
            out_indices = tuple(range(len(model.blocks)))
        self.out_indices = model.prune_intermediate_layers(out_indices, prune_norm=not norm)
        self.model, self.output_fmt, self.norm = model, output_fmt, norm
        p = model.config.patch_size
        self.feature_info = FeatureInfo({"num_chs": model.num_features, "reduction": p, "module": f"blocks.{i}"}
                                        for i in self.out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, self.out_indices, norm=self.norm, output_fmt=self.output_fmt,
                                                intermediates_only=True)
