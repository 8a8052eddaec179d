"""What a Mixer learned, as the paper shows it (Section 3.5, Appendix D, Figures 5-7): the numbers.

Token mixing: each hidden unit of a token-mixing MLP's first Dense layer holds one weight per input
token (a row of `mlp_tokens.fc1.weight`). Tokens are numbered row-major over the patch grid, as the
official `rearrange('n h w c -> n (h w) c')` numbers them, so the row reshaped to (grid_h, grid_w)
puts token (r, c) at cell (r, c). Units are sorted low frequency first, by the radial centroid of
their 2-D power spectrum, and each is followed by its closest inverse: the unit, among those not yet
placed, with the most negative correlation to it.

Stem: each of the C patch-embedding filters is a P x P image (C_in channels).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def unit_grids(fc1_weight: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """(D_S, S) token-mixing weights -> (D_S, grid_h, grid_w), row-major."""
    w = fc1_weight.detach().float().cpu().numpy()
    gh, gw = grid
    if w.shape[1] != gh * gw:
        raise ValueError(f"{w.shape[1]} tokens do not fill a {gh}x{gw} grid")
    return w.reshape(w.shape[0], gh, gw)


def frequency_scores(units: np.ndarray) -> np.ndarray:
    """The radial frequency centroid of each unit's power spectrum (mean removed): 0 for a constant,
    larger for finer patterns. In cycles per token, from 0 to about 0.7."""
    n, gh, gw = units.shape
    centred = units - units.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(centred)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(gh), np.fft.fftfreq(gw), indexing="ij")
    radius = np.sqrt(fy**2 + fx**2)
    total = power.sum(axis=(1, 2))
    return np.where(total > 0, (power * radius).sum(axis=(1, 2)) / np.maximum(total, 1e-30), 0.0)


def order_and_partners(units: np.ndarray, scores: np.ndarray) -> tuple[list[int], dict[int, int | None]]:
    """Units low frequency first, each followed by its most negatively correlated unit among the rest
    (the pairs the paper's Figure 5 shows side by side)."""
    flat = units.reshape(len(units), -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1)
    corr = (flat @ flat.T) / np.maximum(np.outer(norms, norms), 1e-30)
    order: list[int] = []
    partner: dict[int, int | None] = {}
    placed = np.zeros(len(units), dtype=bool)
    for u in np.argsort(scores, kind="stable"):
        if placed[u]:
            continue
        placed[u] = True
        order.append(int(u))
        candidates = np.where(placed, np.inf, corr[u])
        v = int(np.argmin(candidates))
        if placed[v]:  # nothing left to pair with
            partner[int(u)] = None
            continue
        placed[v] = True
        order.append(v)
        partner[int(u)], partner[v] = v, int(u)
    return order, partner


def token_mixing_units(model: torch.nn.Module, block: int) -> dict[str, Any]:
    """The figure's numbers for one block: the unit grids, their order, scores, partners and correlations."""
    cfg = model.config
    units = unit_grids(model.blocks[block].mlp_tokens.fc1.weight, cfg.grid_size)
    scores = frequency_scores(units)
    order, partner = order_and_partners(units, scores)
    return {"block": block, "grid": list(cfg.grid_size), "units": units, "order": order,
            "frequency": {int(u): float(scores[u]) for u in range(len(units))}, "partner": partner}


def stem_units(model: torch.nn.Module) -> np.ndarray:
    """(C, P, P, C_in) patch-embedding filters, each scaled to [0, 1] on its own."""
    w = model.stem.proj.weight.detach().float().cpu().numpy().transpose(0, 2, 3, 1)
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    hi = w.max(axis=(1, 2, 3), keepdims=True)
    return (w - lo) / np.maximum(hi - lo, 1e-12)
