"""A training step against its own GEMMs and against a plain PyTorch loop, in one run: how far the
step is from the matrix products it cannot avoid.

    .venv/bin/python benchmarks/bench_train_step.py [--precision bf16] [--steps 20]
    .venv/bin/python benchmarks/bench_train_step.py --model mixer_b16_224 --batch 256 --device cuda --peak-tflops 989

The step is the trainer's own (`training.step.train_step`: prepare, forward, loss, backward,
clipping, the optimiser): by default on the demo recipe's model, batch and optimiser (Muon, both
torch's and the batched one), else on a registered Mixer with AdamW. The GEMMs are the same products
timed alone with torch.mm in the step's precision: for every Linear of the forward pass (M x K by
K x N), the forward product and the backward's two (dX = dY W, dW = X^T dY), the patch stem (as a
GEMM) and the head; the optimiser's products are not counted. The peer is timm's MlpMixer of the same
shape in a plain loop (fused AdamW, bf16 autocast). With --peak-tflops it prints the model FLOP
utilisation (3 x the forward FLOPs per image). Writes results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mixerlab.models.flops import count_flops
from mixerlab.models.registry import get_config, model_from_config
from mixerlab.perf.gemm import mm_seconds
from mixerlab.perf.runtime import pick_device
from mixerlab.perf.timing import machine_info, time_call
from mixerlab.training.config import TrainConfig
from mixerlab.training.recipes import RECIPES
from mixerlab.training.setup import build_optimizer
from mixerlab.training.step import train_step


def gemm_shapes(cfg, batch: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of every forward GEMM of a Mixer training step."""
    s, c, b = cfg.num_patches, cfg.embed_dim, batch
    stem = [(b * s, cfg.in_chans * cfg.patch_size**2, c)]
    block = [(cfg.tokens_mlp_dim, s, b * c), (s, cfg.tokens_mlp_dim, b * c),  # token mixing: W @ X
             (b * s, c, cfg.channels_mlp_dim), (b * s, cfg.channels_mlp_dim, c)]  # channel mixing: X @ W^T
    return stem + block * cfg.depth + [(b, c, cfg.num_classes)]


def gemm_seconds(shapes: list[tuple[int, int, int]], dtype: torch.dtype, device: torch.device) -> float:
    """Forward and backward products of every shape, each timed alone (the median of repeats)."""
    # forward Y = X W, then dX = dY W^T and dW = X^T dY: (m, k, n), (m, n, k), (k, m, n)
    return sum(mm_seconds(*mkn, dtype, device) for m, k, n in shapes for mkn in ((m, k, n), (m, n, k), (k, m, n)))


def timm_plain_step(mcfg, batch: int, device: torch.device):
    """The peer: timm's MlpMixer of the same shape in a plain PyTorch loop (fused AdamW, bf16 autocast)."""
    from timm.models.mlp_mixer import MlpMixer

    h, w = mcfg.img_size
    ratio = (mcfg.tokens_mlp_dim / mcfg.embed_dim, mcfg.channels_mlp_dim / mcfg.embed_dim)
    model = MlpMixer(num_classes=mcfg.num_classes, img_size=(h, w), in_chans=mcfg.in_chans, patch_size=mcfg.patch_size,
                     num_blocks=mcfg.depth, embed_dim=mcfg.embed_dim, mlp_ratio=ratio).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, 256, (batch, mcfg.in_chans, h, w), dtype=torch.uint8, device=device)
    y = torch.randint(0, mcfg.num_classes, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x.float() / 127.5 - 1), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def trainer_step(tcfg, mcfg, device: torch.device, muon: str, compile_: bool):
    """The trainer's own step, with torch's Muon or the batched one (for --optimizer muon), eager or compiled."""
    import mixerlab.training.muon as m

    model = model_from_config(mcfg).to(device)
    saved = m.BatchedMuon
    if muon == "torch":  # the reference: one matrix at a time
        m.BatchedMuon = torch.optim.Muon
    try:
        opt = build_optimizer(tcfg, model)
    finally:
        m.BatchedMuon = saved
    h, w = mcfg.img_size
    b = tcfg.batch_size
    batches = [(torch.randint(0, 256, (b, mcfg.in_chans, h, w), dtype=torch.uint8),
                torch.randint(0, mcfg.num_classes, (b,)))]
    run = torch.compile(model) if compile_ else model

    def step():
        train_step(run, batches, opt, tcfg, mcfg.num_classes, device, tcfg.precision)

    t = time.perf_counter()
    step()
    return step, time.perf_counter() - t


# The profiler's names for the step's matrix products: the model's (forward addmm/linear, backward mm)
# and the batched Muon's Newton-Schulz (bmm/baddbmm), kept apart. torch's own Muon orthogonalises with
# aten::mm, so in its row the optimiser's products are counted with the model's.
MODEL_GEMMS = ("aten::mm", "aten::addmm", "aten::matmul", "mkldnn::_linear_pointwise")
OPTIMISER_GEMMS = ("aten::bmm", "aten::baddbmm")


def in_step_breakdown(step, device: torch.device, steps: int = 5) -> dict[str, float]:
    """Milliseconds per step, from torch.profiler's self times: the model's products as they run inside
    the step, the optimiser's products, and everything else (elementwise kernels, casts, the optimiser's
    other work). Only the CPU's own time is counted, so on CUDA it says little; run it on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    rows = prof.key_averages()
    total = sum(r.self_cpu_time_total for r in rows)
    model = sum(r.self_cpu_time_total for r in rows if r.key in MODEL_GEMMS)
    opt = sum(r.self_cpu_time_total for r in rows if r.key in OPTIMISER_GEMMS)
    per_step = 1e-3 / steps  # microseconds over `steps` -> milliseconds per step
    return {"model_gemms": model * per_step, "optimiser_gemms": opt * per_step,
            "other": (total - model - opt) * per_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo", help="demo (the demo recipe's model and optimiser) or a registered "
                                                    "Mixer name, e.g. mixer_b16_224 for the GPU figures")
    ap.add_argument("--batch", type=int, help="default: the demo's 128, else 64")
    ap.add_argument("--optimizer", default=None, choices=["adamw", "muon", "sgd"])
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense peak in this precision, for the model "
                                                      "FLOP utilisation (H100 SXM bf16: 989)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="runs/bench-train-step")
    args = ap.parse_args()
    dev = pick_device(args.device)  # tunes malloc on a CPU, as the trainer does: every row below runs with it
    demo = RECIPES["demo"]
    if args.model == "demo":
        opts = {k: v for k, v in demo.items() if k not in ("epochs", "model", "model_args")}
        mcfg = get_config(demo["model"], img_size=28, in_chans=1, num_classes=10, **demo["model_args"])
    else:
        opts = dict(batch_size=64, optimizer="adamw")
        mcfg = get_config(args.model, num_classes=1000)
    opts.update({k: v for k, v in (("batch_size", args.batch), ("optimizer", args.optimizer)) if v})
    tcfg = TrainConfig(**opts, precision=args.precision, epochs=1)
    b = tcfg.batch_size
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    timing = dict(warmup=3, iters=args.steps, repeats=3)
    res = {"machine": machine_info(), "device": str(dev), "precision": args.precision, "batch": b,
           "model": mcfg.to_dict(), "optimizer": tcfg.optimizer, "ms": {}}
    res["ms"]["GEMMs alone (forward and backward)"] = 1e3 * gemm_seconds(gemm_shapes(mcfg, b), dtype, dev)
    variants = [("trainer", "batched", False), ("trainer, torch.compile", "batched", True)]
    if tcfg.optimizer == "muon":
        variants = [("trainer, torch Muon (before)", "torch", False), ("trainer, batched Muon", "batched", False),
                    ("trainer, batched Muon, torch.compile", "batched", True)]
    for label, muon, comp in variants:
        step, first = trainer_step(tcfg, mcfg, dev, muon, comp)
        res["ms"][label] = 1e3 * time_call(step, dev, **timing)
        res.setdefault("first_step_s", {})[label] = first
        res.setdefault("in_step_ms", {})[label] = in_step_breakdown(step, dev)
    try:
        res["ms"]["plain loop, timm MlpMixer"] = 1e3 * time_call(timm_plain_step(mcfg, b, dev), dev, **timing)
    except ImportError:
        pass
    report(res, mcfg, b, args.peak_tflops)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2))


def report(res: dict, mcfg, b: int, peak_tflops: float | None) -> None:
    gemm = res["ms"]["GEMMs alone (forward and backward)"]
    peer = res["ms"].get("plain loop, timm MlpMixer")
    step_flops = 3 * count_flops(mcfg) * b  # forward, and a backward of twice its products
    print(f"{res['model']['arch']} C{mcfg.embed_dim} N{mcfg.depth} {mcfg.img_size[0]} px, batch {b}, "
          f"{res['precision']}, {res['device']}, {res['machine']['cpu']}:")
    for label, ms in res["ms"].items():
        vs_peer = f", {peer / ms:.2f}x the plain timm loop" if peer and "trainer" in label else ""
        mfu = (f", MFU {100 * step_flops / (ms * 1e-3) / (peak_tflops * 1e12):.0f}%"
               if peak_tflops and "GEMMs" not in label else "")
        print(f"  {label:<40} {ms:8.1f} ms  {b / ms * 1e3:7.0f} img/s  {ms / gemm:.2f}x its GEMMs{vs_peer}{mfu}")
        parts = res.get("in_step_ms", {}).get(label)
        if parts and res["device"] == "cpu":
            print(f"  {'':<40} of which (profiled): the model's products {parts['model_gemms']:.1f} ms "
                  f"({parts['model_gemms'] / gemm:.2f}x the same products alone), the optimiser's "
                  f"{parts['optimiser_gemms']:.1f} ms, everything else {parts['other']:.1f} ms")


if __name__ == "__main__":
    main()
