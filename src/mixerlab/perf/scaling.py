"""`mixerlab bench --scaling`: time per image against the number of tokens, far enough out that ViT's
attention dominates, beside the FLOP model's prediction (the paper's Figure 3, right, in kind).

Mixer's FLOPs are linear in the tokens S at a fixed token-mixing width D_S; ViT's attention adds a
term in S^2 that only dominates past about 1,000 tokens for a /16 model. Each segment between two
resolutions gets its local log-log slope, measured and predicted (log of the FLOP ratio over log of
the token ratio). A Mixer fine-tuned at K times the resolution with the paper's block-diagonal
initialisation (`tiles`, Appendix C) widens D_S by K^2 as well, so its token mixing grows as S^2; the
`interpolate` resize keeps D_S and stays linear. Both are shown: measured where the tiled model fits
in memory, the FLOP model everywhere.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..models.flops import count_flops, count_params
from ..models.registry import get_config, model_from_config
from .bench import save_results
from .timing import machine_info, time_call

MAX_MEASURED_PARAMS = 1_000_000_000  # a tiled Mixer at 1344 px has 2.3 billion parameters: FLOPs only


def _variants(name: str, res: int) -> list[tuple[str, Any]]:
    """(label, config) for the model at `res`; for a Mixer, its `tiles`-resized twin as well."""
    cfg = get_config(name, img_size=res)
    if cfg.arch != "mixer":
        return [(name, cfg)]
    base = get_config(name)
    k2 = cfg.num_patches // base.num_patches
    tiled = cfg.replace(tokens_mlp_dim=base.tokens_mlp_dim * max(k2, 1))
    return [(f"{name} (interpolate: D_S fixed)", cfg), (f"{name} (tiles: D_S x K^2)", tiled)]


def _seconds_per_image(cfg: Any, dtype: torch.dtype, batch: int, timing: dict) -> float | None:
    with torch.device("meta"):  # counted without allocating
        if count_params(model_from_config(cfg)) > MAX_MEASURED_PARAMS:
            return None
    model = model_from_config(cfg).to(dtype).eval()
    x = torch.randn(batch, cfg.in_chans, *cfg.img_size, dtype=dtype)
    with torch.inference_mode():
        return time_call(lambda: model(x), torch.device("cpu"), **timing) / batch


def local_slopes(tokens: list[int], values: list[float | None]) -> list[float | None]:
    """log(v2 / v1) / log(S2 / S1) for each segment; None where a value is missing."""
    return [math.log(b / a) / math.log(t2 / t1) if a and b else None
            for (t1, a), (t2, b) in zip(zip(tokens, values), zip(tokens[1:], values[1:]))]


def run_scaling(out_dir: Path, models: tuple[str, ...] = ("mixer_b16_224", "vit_b16_224"),
                resolutions: tuple[int, ...] = (224, 448, 896, 1344), dtype: torch.dtype = torch.bfloat16,
                batch: int = 1, quick: bool = False, log=print) -> dict[str, Any]:
    timing = dict(warmup=1, iters=1, repeats=1) if quick else dict(warmup=1, iters=1, repeats=3)
    series: dict[str, dict[str, list]] = {}
    for name in models:
        for res in resolutions:
            for label, cfg in _variants(name, res):
                s = series.setdefault(label, {"img_size": [], "tokens": [], "gflops": [], "s_per_img": []})
                sec = _seconds_per_image(cfg, dtype, batch, timing)
                s["img_size"].append(res)
                s["tokens"].append(cfg.num_patches)
                s["gflops"].append(count_flops(cfg) / 1e9)
                s["s_per_img"].append(sec)
                log(f"{label:<40} {res:>5}px {cfg.num_patches:>6} tokens {count_flops(cfg) / 1e9:9.1f} GFLOPs "
                    + (f"{sec:9.4f} s/img" if sec else "   (FLOPs only: too large to run here)"))
    for s in series.values():
        s["slope_measured"] = local_slopes(s["tokens"], s["s_per_img"])
        s["slope_flops"] = local_slopes(s["tokens"], s["gflops"])
    res = {"machine": machine_info(), "dtype": str(dtype).replace("torch.", ""), "batch": batch, "series": series}
    return save_results(out_dir, "scaling", res, to_markdown, plot_scaling)


def to_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}; {res['dtype']}, batch {res['batch']}.",
             "", "| model | segment (px) | tokens | local slope, measured | local slope, FLOP model |",
             "| --- | --- | --- | --- | --- |"]
    for label, s in res["series"].items():
        for i, (meas, pred) in enumerate(zip(s["slope_measured"], s["slope_flops"])):
            seg = f"{s['img_size'][i]} -> {s['img_size'][i + 1]}"
            toks = f"{s['tokens'][i]} -> {s['tokens'][i + 1]}"
            lines.append(f"| {label} | {seg} | {toks} | {'-' if meas is None else f'{meas:.2f}'} | {pred:.2f} |")
    return "\n".join(lines) + "\n"


def plot_scaling(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (label, s) in enumerate(res["series"].items()):
        colour = f"C{i}"
        pts = [(t, v) for t, v in zip(s["tokens"], s["s_per_img"]) if v]
        if pts:
            ax.loglog(*zip(*pts), "o-", color=colour, label=f"{label}, measured")
            # the FLOP model, anchored at the first measurement: time proportional to FLOPs
            t0, v0 = pts[0]
            f0 = s["gflops"][s["tokens"].index(t0)]
            ax.loglog(s["tokens"], [v0 * f / f0 for f in s["gflops"]], "--", color=colour, alpha=0.6,
                      label=f"{label}, FLOP model")
    ax.set_xlabel("tokens (patches)")
    ax.set_ylabel("seconds per image")
    ax.set_title(f"time per image against tokens ({res['dtype']}, batch {res['batch']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
