"""Throughput measurement: Mixer beside ViT (and timm when installed), in one process, side by side.

The paper's metric is images per second per core. Each number here is the median over repeats of a
timed loop after warm-up; the machine, threads and torch version are recorded with the results.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..models.flops import count_flops
from ..models.registry import create_model
from ..training.optim import make_fused
from .gemm import SHAPES, gemm_rates, onednn_kernels
from .threads import load_phrase
from .timing import UNSTEADY, machine_info, time_call, time_call_spread


def inference_throughput(model: nn.Module | Callable, x: torch.Tensor, device: torch.device,
                         autocast_dtype: torch.dtype | None = None, with_spread: bool = False, **timing: Any):
    """Images per second of a forward pass (no grad) at x's batch size; with `with_spread`, also how
    much the repeats varied (slowest over fastest)."""
    def call():
        with torch.inference_mode():
            if autocast_dtype is not None:
                with torch.autocast(device.type, dtype=autocast_dtype):
                    return model(x)
            return model(x)

    seconds, varied = time_call_spread(call, device, **timing)
    return (x.shape[0] / seconds, varied) if with_spread else x.shape[0] / seconds


def train_throughput(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str = "fp32",
                     **timing: Any) -> float:
    """Images per second of a full training step: forward, backward, AdamW (fused, as the trainer's)."""
    model.train()
    opt = make_fused(torch.optim.AdamW, model.parameters(), lr=1e-4)
    y = torch.randint(0, model.num_classes, (x.shape[0],), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return x.shape[0] / time_call(step, device, **timing)


def loglog_slope(patches: list[int], seconds_per_image: list[float]) -> float:
    """Least-squares slope of log(time) against log(patches): 1 is linear cost, 2 quadratic."""
    lx = [math.log(p) for p in patches]
    ly = [math.log(t) for t in seconds_per_image]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def exported_runs(model: nn.Module, runtimes: tuple[str, ...], prec: str, log: Callable[[str], None] = print
                  ) -> list[tuple[str, nn.Module, None]]:
    """`model` exported once and loaded in each of `runtimes` ("onnxruntime": fp32 only; "openvino": f32,
    or bf16 where the CPU has native bf16), as (label, model, None) runs; what cannot be timed here is
    said in one line."""
    from .inference import exported_candidates
    from .runtime import native_bf16

    if prec == "bf16":  # ONNX Runtime has no bf16 GEMMs on CPUs; OpenVINO ignores its bf16 hint without them
        runtimes = tuple(r for r in runtimes if r == "openvino" and native_bf16(torch.device("cpu")))
    got = exported_candidates(model, runtimes, "bf16" if prec == "bf16" else "f32")
    runs = []
    for runtime in runtimes:
        found = got.get(runtime)
        if found is None:
            log(f"{runtime}: not timed (not installed, or the export failed: see the log)")
        else:
            runs.append((runtime, found, None))
    return runs


def timm_model(name: str) -> nn.Module | None:
    try:
        import timm
    except ImportError:
        return None
    return timm.create_model(name, pretrained=False)


def run_default(out_dir: Path, batch: int = 32, device: str = "cpu", quick: bool = False,
                models: list[tuple[str, str]] | None = None, resolutions: tuple[int, ...] = (112, 224, 448),
                scale_models: tuple[str, ...] = ("mixer_b16_224", "vit_b16_224"), precisions=("fp32", "bf16"),
                log: Callable[[str], None] = print, optimized: bool = False, runtimes: tuple[str, ...] = ()
                ) -> dict[str, Any]:
    """Mixer against the ViT of its size class at 224 px, then the resolution scan. `runtimes`
    ("onnxruntime", "openvino") also times each mixerlab model exported to them (CPU). A Ctrl-C keeps
    what was measured: the files are written with "interrupted": true, then KeyboardInterrupt goes on."""
    dev = torch.device(device)
    cores = torch.get_num_threads()
    timing = dict(warmup=1, iters=1, repeats=2) if quick else dict(warmup=2, iters=2, repeats=3)
    models = models or [("mixer_s16_224", "mixerlab"), ("vit_s16_224", "mixerlab"), ("mixer_b16_224", "mixerlab"),
                        ("vit_b16_224", "mixerlab"), ("mixer_b16_224", "timm"), ("vit_base_patch16_224", "timm")]
    results: dict[str, Any] = {"machine": machine_info(), "batch": batch, "inference": [], "scaling": [], "gemm": {}}
    m = results["machine"]
    log(f"{m['cpu']}, {m['threads']} thread(s), {load_phrase(m['load_average'], m['usable_cores'])}")
    try:
        _measure(results, dev, cores, timing, batch, quick, models, resolutions, scale_models, precisions, log,
                 optimized, runtimes)
    except KeyboardInterrupt:
        results["interrupted"] = True
        save_results(out_dir, "bench", results, to_markdown, plot)
        log(f"interrupted: what was measured so far is in {out_dir}/bench.json")
        raise
    return save_results(out_dir, "bench", results, to_markdown, plot)


def _measure(results: dict[str, Any], dev: torch.device, cores: int, timing: dict, batch: int, quick: bool,
             models: list[tuple[str, str]], resolutions: tuple[int, ...], scale_models: tuple[str, ...],
             precisions, log: Callable[[str], None], optimized: bool, runtimes: tuple[str, ...] = ()) -> None:
    """The measurements of run_default, each appended to `results` as soon as it is made."""
    for prec in precisions:  # the machine's limit: the best GEMM rate of any backend
        g = gemm_rates(torch.bfloat16 if prec == "bf16" else torch.float32, dev,
                       ((256, 384, 1536),) if quick else SHAPES)  # quick: a small one (emulated bf16 is slow)
        results["gemm"][prec] = g
        log(f"GEMM {prec}: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in g["backends"].items())
            + f"; the limit: {g['best_backend']}")
        if dev.type == "cpu":  # what oneDNN runs on here, and whether its kernels use AMX
            k = onednn_kernels(torch.bfloat16 if prec == "bf16" else torch.float32)
            results.setdefault("onednn", {})[prec] = k
            log(f"oneDNN {prec}: {onednn_phrase(k)}")
    for name, source in models:
        model = create_model(name) if source == "mixerlab" else timm_model(name)
        if model is None:
            continue
        model = model.to(dev).eval()
        cfg = getattr(model, "config", None)  # timm models: 224 px RGB
        h, w = cfg.img_size if cfg else (224, 224)
        x = torch.randn(batch, cfg.in_chans if cfg else 3, h, w, device=dev)
        gflops = count_flops(create_model(name)) / 1e9 if source == "mixerlab" else None
        for prec in precisions:
            runs = [(source, model, torch.bfloat16 if prec == "bf16" else None)]
            if optimized and source == "mixerlab":  # the fastest path this machine has, as users get it
                from .inference import optimize_for_inference

                # --quick (the smoke test) leaves out torch.compile and the exported runtimes: they are
                # the slowest candidates to build
                fast = optimize_for_inference(model, torch.bfloat16 if prec == "bf16" else torch.float32,
                                              compile=not quick, example=x,
                                              **({"backends": ("onednn",)} if quick else {}))
                runs.append(("mixerlab, optimize_for_inference", fast, None))
                log(f"optimize_for_inference {name} {prec}: {fast.optimizations[-1]}")
            if source == "mixerlab" and dev.type == "cpu":
                runs += exported_runs(model, runtimes, prec, log)
            for label, m, autocast_dtype in runs:
                ips, varied = inference_throughput(m, x, dev, autocast_dtype, with_spread=True, **timing)
                limit = results["gemm"][prec]["best_gflops"]
                results["inference"].append({
                    "model": name, "source": label, "precision": prec, "img_s": ips, "img_s_core": ips / cores,
                    "gflops_per_img": gflops, "share_of_gemm_limit": ips * gflops / limit if gflops else None,
                    "spread": varied, "unreliable": varied > UNSTEADY})
                log(f"{label:>8} {name:<22} {prec:<5} {ips:8.2f} img/s  {ips / cores:7.2f} img/s/core"
                    + (f"  UNRELIABLE: repeats varied {varied:.1f}x (other jobs on the cores?)"
                       if varied > UNSTEADY else ""))
    for name in scale_models:
        for res in resolutions:
            model = create_model(name, img_size=res).to(dev).eval()
            n = max(1, batch * 224 * 224 // (res * res))  # about the same pixels per call at every size
            x = torch.randn(n, model.config.in_chans, res, res, device=dev)
            ips = inference_throughput(model, x, dev, None, **timing)
            row = {"model": name, "img_size": res, "patches": model.config.num_patches, "img_s": ips,
                   "s_per_img": 1 / ips, "gflops_per_img": count_flops(model) / 1e9}
            results["scaling"].append(row)
            log(f"scaling {name:<16} {res:>4}px {model.config.num_patches:>5} patches {ips:8.2f} img/s")
    slopes = {}
    for name in scale_models:
        rows = [r for r in results["scaling"] if r["model"] == name]
        slopes[name] = loglog_slope([r["patches"] for r in rows], [r["s_per_img"] for r in rows])
    results["loglog_slope"] = slopes


def save_results(out_dir: Path, stem: str, results: dict[str, Any], markdown: Callable, draw: Callable) -> dict:
    """`stem`.json, .md and .png in `out_dir`: the numbers, their table and their plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (out_dir / f"{stem}.md").write_text(markdown(results))
    draw(results, out_dir / f"{stem}.png")
    return results


def onednn_phrase(k: dict[str, Any]) -> str:
    kernels = ", ".join(k["kernels"]) or "none (oneDNN ran no Linear in this precision)"
    return f"ISA {k['isa'] or 'not reported'}; Linear kernels {kernels}; AMX used: {'yes' if k['amx_used'] else 'no'}"


def to_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}; batch {results['batch']}; "
             f"{load_phrase(m.get('load_average'), m.get('usable_cores', m['cores']))}.", ""]
    if results.get("interrupted"):
        lines += ["Interrupted (Ctrl-C): only what was measured before it is below.", ""]
    for prec, g in results.get("gemm", {}).items():
        lines.append(f"GEMM limit, {prec}: " + ", ".join(f"{k} {v:.0f}" for k, v in g["backends"].items())
                     + f" GFLOP/s; the best is {g['best_backend']}.")
    for prec, k in results.get("onednn", {}).items():
        lines.append(f"oneDNN, {prec}: {onednn_phrase(k)}.")
    lines += ["", "| source | model | precision | img/s | img/s/core | share of the GEMM limit |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in results["inference"]:
        share = f"{100 * r['share_of_gemm_limit']:.0f}%" if r.get("share_of_gemm_limit") else "-"
        flag = " (unreliable: repeats varied {:.1f}x)".format(r["spread"]) if r.get("unreliable") else ""
        lines.append(f"| {r['source']} | {r['model']} | {r['precision']} | {r['img_s']:.2f}{flag} | "
                     f"{r['img_s_core']:.2f} | {share} |")
    lines += ["", "| model | px | patches | img/s | GFLOPs/img |", "| --- | --- | --- | --- | --- |"]
    for r in results["scaling"]:
        lines.append(f"| {r['model']} | {r['img_size']} | {r['patches']} | {r['img_s']:.2f} | "
                     f"{r['gflops_per_img']:.1f} |")
    lines += ["", "Log-log slope of time per image against patches: " +
              ", ".join(f"{k} {v:.2f}" for k, v in results.get("loglog_slope", {}).items()), ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows = results["inference"]
    labels = [f"{r['source']}\n{r['model']}\n{r['precision']}" for r in rows]
    axes[0].bar(range(len(rows)), [r["img_s_core"] for r in rows])
    axes[0].set_xticks(range(len(rows)), labels, fontsize=6)
    axes[0].set_ylabel("img/s/core")
    axes[0].set_title(f"inference at 224 px, batch {results['batch']}")
    for name in {r["model"] for r in results["scaling"]}:
        s = [r for r in results["scaling"] if r["model"] == name]
        slope = results.get("loglog_slope", {}).get(name)
        axes[1].loglog([r["patches"] for r in s], [r["s_per_img"] for r in s], marker="o",
                       label=name if slope is None else f"{name} (slope {slope:.2f})")
    axes[1].set_xlabel("patches")
    axes[1].set_ylabel("seconds per image")
    if results["scaling"]:
        axes[1].legend()
    axes[1].set_title("scaling with resolution")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
