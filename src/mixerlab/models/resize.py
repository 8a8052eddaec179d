"""Fine-tuning at another resolution: new token-mixing weights for a new token grid.

The token-mixing MLP is tied to the number of patches S, so a Mixer pre-trained at 224 px cannot take
448 px as it stands. Paper Appendix C: at K-times the resolution, split the new grid into K x K
sub-grids of the old size and initialise each token-mixing MLP block-diagonally, one copy of the
pre-trained weights per sub-grid (hidden width K^2 * D_S). Two ways to choose the sub-grids:

- "tiles": contiguous tiles. A 2x2 mosaic of four images gives the mean of their four logits.
- "strided": sub-grid (u, v) holds every K-th token from (u, v). An interleaved mosaic does the same.
- "interpolate": any grid; each hidden unit's weights are resized bilinearly over the token grid
  (the input side of the first Dense, the output side of the second), D_S unchanged.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import to_2tuple

log = logging.getLogger(__name__)

METHODS = ("tiles", "strided", "interpolate")


def _old_index_and_block(
    old: tuple[int, int], k: tuple[int, int], method: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every token of the new grid (row-major): its token in the old grid and its sub-grid."""
    gh, gw = old
    kh, kw = k
    r = torch.arange(gh * kh).view(-1, 1).expand(-1, gw * kw)
    c = torch.arange(gw * kw).view(1, -1).expand(gh * kh, -1)
    if method == "tiles":
        block = (r // gh) * kw + (c // gw)
        local = (r % gh) * gw + (c % gw)
    else:  # strided
        block = (r % kh) * kw + (c % kw)
        local = (r // kh) * gw + (c // kw)
    return local.reshape(-1), block.reshape(-1)


@torch.no_grad()
def _block_diagonal(mlp: nn.Module, old: tuple[int, int], k: tuple[int, int], method: str) -> None:
    local, block = _old_index_and_block(old, k, method)
    w1, b1, w2, b2 = mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias
    ds, nb, s_new = w1.shape[0], k[0] * k[1], local.numel()
    hidden_block = torch.arange(nb * ds, device=w1.device) // ds  # sub-grid of each new hidden unit
    same = hidden_block.view(-1, 1) == block.to(w1.device).view(1, -1)  # (nb*ds, S')
    new_w1 = w1[:, local].repeat(nb, 1) * same  # [t*ds + d, token] = W1[d, old(token)] in block t
    new_w2 = w2[local, :].repeat(1, nb) * same.T
    mlp.fc1 = nn.Linear(s_new, nb * ds, device=w1.device, dtype=w1.dtype)
    mlp.fc2 = nn.Linear(nb * ds, s_new, device=w1.device, dtype=w1.dtype)
    mlp.fc1.weight.copy_(new_w1)
    mlp.fc1.bias.copy_(b1.repeat(nb))
    mlp.fc2.weight.copy_(new_w2)
    mlp.fc2.bias.copy_(b2[local])


@torch.no_grad()
def _interpolate(mlp: nn.Module, old: tuple[int, int], new: tuple[int, int]) -> None:
    w1, b1, w2, b2 = mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias
    s_old, s_new = old[0] * old[1], new[0] * new[1]
    antialias = s_new < s_old

    def resize(t: torch.Tensor) -> torch.Tensor:  # (N, S_old) -> (N, S_new), over the token grid
        grid = t.float().reshape(t.shape[0], 1, *old)
        out = F.interpolate(grid, size=new, mode="bilinear", align_corners=False, antialias=antialias)
        return out.reshape(t.shape[0], s_new).to(t.dtype)

    # Each hidden unit sums over S tokens: rescale so it sums the same signal over S' tokens.
    new_w1 = resize(w1) * (s_old / s_new)
    new_w2 = resize(w2.T).T
    new_b2 = resize(b2.view(1, -1)).view(-1)
    mlp.fc1 = nn.Linear(s_new, w1.shape[0], device=w1.device, dtype=w1.dtype)
    mlp.fc2 = nn.Linear(w1.shape[0], s_new, device=w1.device, dtype=w1.dtype)
    mlp.fc1.weight.copy_(new_w1)
    mlp.fc1.bias.copy_(b1)
    mlp.fc2.weight.copy_(new_w2)
    mlp.fc2.bias.copy_(new_b2)


def integer_factor(old: tuple[int, int], new: tuple[int, int]) -> tuple[int, int] | None:
    """(Kh, Kw) when the new grid is a whole multiple of the old one per side, else None."""
    if new[0] % old[0] or new[1] % old[1]:
        return None
    return (new[0] // old[0], new[1] // old[1])


def resize_token_mixing(
    model: nn.Module, img_size: int | tuple[int, int], method: str = "auto"
) -> nn.Module:
    """A copy of `model` that takes `img_size` images. `method`: "tiles", "strided", "interpolate",
    or "auto" (tiles when the new grid is an integer multiple of the old, interpolate otherwise)."""
    if getattr(getattr(model, "config", None), "arch", None) != "mixer" or not hasattr(model, "blocks"):
        raise TypeError(f"resize_token_mixing takes an MlpMixer, got {type(model).__name__}")
    cfg = model.config
    new_cfg = cfg.replace(img_size=to_2tuple(img_size))  # validates divisibility by the patch
    old_grid, new_grid = cfg.grid_size, new_cfg.grid_size
    k = integer_factor(old_grid, new_grid)
    if method == "auto":
        method = "tiles" if k is not None else "interpolate"
    if method not in METHODS:
        raise ValueError(f"unknown resize method {method!r}; choose one of {METHODS} or 'auto'")
    if method in ("tiles", "strided") and k is None:
        raise ValueError(
            f"method {method!r} needs a whole factor per side: the grid {old_grid} does not divide "
            f"{new_grid} (img_size {new_cfg.img_size}); use method='interpolate'"
        )
    new = copy.deepcopy(model)
    for blk in new.blocks:
        if method == "interpolate":
            _interpolate(blk.mlp_tokens, old_grid, new_grid)
        else:
            _block_diagonal(blk.mlp_tokens, old_grid, k, method)  # type: ignore[arg-type]
    tokens_mlp_dim = new.blocks[0].mlp_tokens.fc1.out_features
    new.config = new_cfg.replace(tokens_mlp_dim=tokens_mlp_dim)
    log.info(
        "resized token mixing %s -> %s (%s): grid %s -> %s, D_S %d -> %d",
        cfg.img_size, new.config.img_size, method, old_grid, new_grid, cfg.tokens_mlp_dim, tokens_mlp_dim,
    )
    return new
