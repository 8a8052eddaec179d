"""MLP-Mixer (Tolstikhin et al., 2021), faithful to the official Flax module `vit_jax/models_mixer.py`.

Layout: inside the blocks the activations are kept token-major, (S, B, C). The token-mixing MLP then
acts on a contiguous (S, B*C) matrix, so it is a single GEMM `W @ X` with no transposes, and the
channel-mixing MLP is a plain Linear over the last axis. Parameter names and shapes equal timm's
`MlpMixer`, so timm state dicts load without renaming. `forward_features` returns (B, S, C) like timm.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ClassifierBase
from .config import MixerConfig
from .layers import DropPath, lecun_normal_, make_act


class Mlp(nn.Module):
    """Dense -> GELU -> Dense. Used over channels as a normal Linear stack."""

    def __init__(self, in_features: int, hidden_features: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = make_act(act)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TokenMlp(Mlp):
    """The same parameters as `Mlp(S, D_S)`, applied along the token axis of a token-major tensor.

    x is (S, B, C) contiguous; viewing it as (S, B*C) makes each MLP layer one `addmm`, the bias
    broadcast along the columns, which is where every channel of every image sits.

    With `rows = True` the same products run as Linear layers on the (B*C, S) transpose instead: a copy
    of the activations, but every product then has the Linear form that Inductor's freezing hands to
    oneDNN with its weight prepacked and GELU fused (perf/inference.py uses it for compiled fp32).
    """

    rows = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, b, c = x.shape
        if self.rows:
            y = super().forward(x.permute(1, 2, 0).reshape(b * c, s))
            return y.view(b, c, s).permute(2, 0, 1)
        h = torch.addmm(self.fc1.bias.unsqueeze(1), self.fc1.weight, x.reshape(s, b * c))
        h = self.act(h)
        y = torch.addmm(self.fc2.bias.unsqueeze(1), self.fc2.weight, h)
        return y.view(s, b, c)


class MixerBlock(nn.Module):
    def __init__(self, cfg: MixerConfig, drop_path: float):
        super().__init__()
        s = cfg.num_patches
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp_tokens = TokenMlp(s, cfg.tokens_mlp_dim, cfg.act)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp_channels = Mlp(cfg.embed_dim, cfg.channels_mlp_dim, cfg.act)
        self.drop_path = DropPath(drop_path, batch_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x)))
        x = x + self.drop_path(self.mlp_channels(self.norm2(x)))
        return x


class PatchStem(nn.Module):
    """One shared linear map per non-overlapping PxP patch (a strided convolution)."""

    def __init__(self, cfg: MixerConfig):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=p, stride=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C, gh, gw)
        # Row-major patch order, as the official `rearrange('n h w c -> n (h w) c')`; token-major out.
        return x.flatten(2).permute(2, 0, 1).contiguous()


def check_input(x: torch.Tensor, in_chans: int, img_size: tuple[int, int], hint: str = "") -> None:
    """Clear errors for the mistakes users make, before torch reports them from deep inside."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (B, {in_chans}, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"expected a 4-D batch (B, {in_chans}, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        layout = " (the input looks NHWC: permute it to NCHW)" if x.shape[-1] == in_chans else ""
        raise ValueError(f"the model takes {in_chans} input channels, got {x.shape[1]}{layout}")
    h, w = x.shape[-2:]
    if (h, w) != tuple(img_size):
        raise ValueError(
            f"input image size {h}x{w} does not match the model's {img_size[0]}x{img_size[1]}{hint}"
        )


class MlpMixer(ClassifierBase):
    config_class = MixerConfig

    def __init__(self, cfg: MixerConfig | None = None, **overrides: Any):
        super().__init__()
        cfg = (cfg or MixerConfig()).replace(**overrides) if overrides else (cfg or MixerConfig())
        self._init_common(cfg)
        device = torch.empty(()).device  # the default device, or meta inside `with torch.device("meta")`
        # Built without memory, then given storage and initialised once: torch's default init of every
        # Linear would be computed only to be overwritten by init_weights.
        with torch.device("meta"):
            self.stem = PatchStem(cfg)
            n = cfg.depth
            # Stochastic depth rises linearly from 0 at the first layer to drop_path_rate at the last.
            rates = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]
            self.blocks = nn.Sequential(*[MixerBlock(cfg, r) for r in rates])
            self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
            self.head_drop = nn.Dropout(cfg.drop_rate)
            self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        if device.type != "meta":
            self.to_empty(device=device)
            self.init_weights(cfg.init)

    # -- initialisation -------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, mode: str = "jax") -> None:
        """'jax': the official module (lecun-normal kernels, zero biases); 'timm': timm's scheme
        (xavier-uniform MLP kernels, 1e-6-normal MLP biases). Both zero the head, as the paper does."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                if name == "head":
                    nn.init.zeros_(m.weight)
                    nn.init.zeros_(m.bias)
                elif mode == "jax":
                    lecun_normal_(m.weight, fan_in=m.in_features)
                    nn.init.zeros_(m.bias)
                else:
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.normal_(m.bias, std=1e-6)
            elif isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                lecun_normal_(m.weight, fan_in=fan_in)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """The checked input through the stem: tokens in the blocks' layout, (S, B, C)."""
        check_input(
            x, self.config.in_chans, self.config.img_size,
            hint="; model.set_input_size((H, W)) adapts a model to a new size",
        )
        return self.stem(x)

    @staticmethod
    def _to_nlc(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(0, 1)

    def _features_token_major(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self._run_blocks(self._embed(x)))  # (S, B, C)

    def set_input_size(self, img_size: int | tuple[int, int], method: str = "auto") -> None:
        """Take images of `img_size` from now on, in place: the token-mixing weights are resized as
        paper Appendix C does (`resize_token_mixing`: block-diagonal tiles for K times the grid,
        `strided` or `interpolate` otherwise; `auto` picks tiles where K is a whole number)."""
        from .resize import resize_token_mixing

        new = resize_token_mixing(self, img_size, method=method)
        self.config = new.config
        self.blocks = new.blocks

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the final LayerNorm, (B, S, C)."""
        return self._features_token_major(x).transpose(0, 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, S, C) tokens -> mean over tokens -> head. `pre_logits` returns the pooled features."""
        x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._features_token_major(x).mean(dim=0)  # pool without materialising (B, S, C)
        return self.head(self.head_drop(x))


def mixer_reference_forward(model: MlpMixer, x: torch.Tensor) -> torch.Tensor:
    """The plain formulation, written as the paper states it: (B, S, C) tables, the token MLP applied
    to the transposed table. Slow; it exists so the fast layout can be tested against it."""
    x = model.stem.proj(x).flatten(2).transpose(1, 2)  # (B, S, C)
    for blk in model.blocks:
        t = blk.mlp_tokens
        y = blk.norm1(x).transpose(1, 2)  # (B, C, S)
        y = F.linear(t.act(F.linear(y, t.fc1.weight, t.fc1.bias)), t.fc2.weight, t.fc2.bias)
        x = x + y.transpose(1, 2)
        x = x + blk.mlp_channels(blk.norm2(x))
    x = model.norm(x).mean(dim=1)
    return model.head(x)
