"""The figures of `mixerlab viz`, and the JSON of numbers beside each so it can be checked and reused.

- `token_mixing_block{i}.png`: every hidden unit of block i's token-mixing MLP over the patch grid, in
  the order of units.py (low frequency first, each beside its closest inverse), on a diverging colour
  map symmetric around zero per unit (red positive, blue negative); `token_mixing_block{i}_first64.png`
  the first 64; `token_mixing_block{i}.json` the order, frequency scores and partners.
- `stem.png`: the patch-embedding filters as P x P images (RGB scaled per unit, grey for one channel).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io_utils import atomic_write, atomic_write_json
from .units import stem_units, token_mixing_units


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mosaic(images: list[np.ndarray], cols: int, gap: int = 1) -> np.ndarray:
    """The images (H, W) or (H, W, C) laid out in rows of `cols`, `gap` pixels of NaN between them."""
    h, w = images[0].shape[:2]
    rows = math.ceil(len(images) / cols)
    extra = images[0].shape[2:]
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *extra), np.nan, dtype=np.float32)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = im
    return out


def _grid_figure(images: list[np.ndarray], path: Path, title: str, diverging: bool, cols: int | None = None) -> Path:
    """One image of all the units side by side (one imshow, not an axis per unit: a B/16 block has
    384 of them)."""
    plt = _plt()
    n = len(images)
    cols = cols or max(1, math.ceil(math.sqrt(n * 1.6)))
    rows = math.ceil(n / cols)
    fig, ax = plt.subplots(figsize=(min(cols * 0.9, 24) + 1.2, min(rows * 0.9, 24) + 0.6))
    ax.set_axis_off()
    if diverging:  # each unit scaled to its own largest weight, so that the one colour bar holds for all
        scaled = [im / (float(np.abs(im).max()) or 1.0) for im in images]
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="white")
        shown = ax.imshow(_mosaic(scaled, cols), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
        fig.colorbar(shown, ax=ax, shrink=0.6, pad=0.02, label="weight / the unit's largest |weight|")
    else:
        grid = _mosaic(images, cols)
        if grid.shape[-1] == 1:
            cmap = plt.get_cmap("gray").with_extremes(bad="white")
            ax.imshow(grid[..., 0], cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(np.nan_to_num(grid, nan=1.0), interpolation="nearest")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)
    return path


def token_mixing_figure(model: torch.nn.Module, block: int, out: Path) -> dict[str, Any]:
    """PNGs and JSON of one block's token-mixing units; returns the JSON's content."""
    info = token_mixing_units(model, block)
    units, order = info.pop("units"), info["order"]
    g = "x".join(map(str, info["grid"]))
    _grid_figure([units[u] for u in order], out / f"token_mixing_block{block}.png",
                 f"block {block}: {len(order)} token-mixing units over the {g} patch grid, low frequency first, "
                 f"each beside its closest inverse", diverging=True)
    _grid_figure([units[u] for u in order[:64]], out / f"token_mixing_block{block}_first64.png",
                 f"block {block}: the first 64 units", diverging=True, cols=8)
    info["partner"] = {str(k): v for k, v in info["partner"].items()}
    info["frequency"] = {str(k): v for k, v in info["frequency"].items()}
    atomic_write_json(out / f"token_mixing_block{block}.json", info)
    return info


def stem_figure(model: torch.nn.Module, out: Path) -> Path:
    cfg = model.config
    filters = stem_units(model)
    if filters.shape[-1] not in (1, 3):  # other channel counts: the mean over channels, grey
        filters = filters.mean(axis=-1, keepdims=True)
    title = f"stem: {len(filters)} patch-embedding filters of {cfg.patch_size}x{cfg.patch_size} px"
    _grid_figure(list(filters), out / "stem.png", title, diverging=False)
    atomic_write_json(out / "stem.json", {"filters": len(filters), "patch_size": cfg.patch_size,
                                          "in_chans": cfg.in_chans, "scaling": "each filter to [0, 1] on its own"})
    return out / "stem.png"


def visualize(model: torch.nn.Module, out: str | Path, blocks: list[int] | None = None) -> dict[str, Any]:
    """All figures of a Mixer into `out`; returns what was written."""
    if getattr(model.config, "arch", None) != "mixer":
        raise ValueError(f"mixerlab viz draws MLP-Mixer token mixing; this is a {model.config.arch} model")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    depth = len(model.blocks)
    blocks = list(range(min(3, depth))) if blocks is None else blocks
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad:
        raise ValueError(f"--blocks {bad}: the model has blocks 0..{depth - 1}")
    for b in blocks:
        token_mixing_figure(model, b, out)
    stem_figure(model, out)
    return {"blocks": blocks, "files": sorted(p.name for p in out.iterdir())}
