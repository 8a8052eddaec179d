"""The demo model's training step against its own GEMMs, in one run: how far the step is from the
matrix products it cannot avoid.

    .venv/bin/python benchmarks/bench_train_step.py [--precision bf16] [--steps 20]

The step is the trainer's own (`training.step.train_step`: prepare, forward, loss, backward,
clipping, the optimiser), on the demo recipe's model and batch (Muon for the hidden matrices). The
GEMMs are the same products timed alone with torch.mm in the step's precision: for every Linear of
the forward pass (M x K by K x N), the forward product and the backward's two (dX = dY W, dW = X^T dY),
for the patch stem (as a GEMM) and the head. Muon's Newton-Schulz products are timed separately: they
belong to the optimiser. Prints step time / GEMM time and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mixerlab.models.registry import get_config, model_from_config
from mixerlab.perf.allocator import tune_cpu_allocator
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


def gemm_seconds(shapes: list[tuple[int, int, int]], dtype: torch.dtype) -> float:
    """Forward and backward products of every shape, each timed alone (the median of repeats)."""
    total = 0.0
    for m, k, n in shapes:
        for a_shape, b_shape in (((m, k), (k, n)), ((m, n), (n, k)), ((k, m), (m, n))):
            a, b = torch.randn(*a_shape, dtype=dtype), torch.randn(*b_shape, dtype=dtype)
            out = torch.empty(a_shape[0], b_shape[1], dtype=dtype)
            total += time_call(lambda a=a, b=b, out=out: torch.mm(a, b, out=out), torch.device("cpu"), warmup=2,
                               iters=5, repeats=3)
    return total


def timm_plain_step(mcfg, batch: int):
    """The peer: timm's MlpMixer of the same shape in a plain PyTorch loop (fused AdamW, bf16 autocast)."""
    from timm.models.mlp_mixer import MlpMixer

    model = MlpMixer(num_classes=10, img_size=28, in_chans=1, patch_size=mcfg.patch_size, num_blocks=mcfg.depth,
                     embed_dim=mcfg.embed_dim, mlp_ratio=(mcfg.tokens_mlp_dim / mcfg.embed_dim,
                                                          mcfg.channels_mlp_dim / mcfg.embed_dim))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x.float() / 127.5 - 1), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def trainer_step(tcfg, mcfg, precision: str, muon: str, compile_: bool):
    """The trainer's own step on the demo model, with torch's Muon or the batched one, eager or compiled."""
    from mixerlab.training import optim

    model = model_from_config(mcfg)
    if muon == "torch":  # the reference: one matrix at a time
        import mixerlab.training.muon as m

        saved, m.BatchedMuon = m.BatchedMuon, torch.optim.Muon
        opt = build_optimizer(tcfg, model)
        m.BatchedMuon = saved
    else:
        opt = build_optimizer(tcfg, model)
    assert isinstance(opt, optim.MuonAdamW)
    b = tcfg.batch_size
    batches = [(torch.randint(0, 256, (b, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (b,)))]
    run = torch.compile(model) if compile_ else model
    t = time.perf_counter()
    train_step(run, batches, opt, tcfg, 10, torch.device("cpu"), precision)
    return (lambda: train_step(run, batches, opt, tcfg, 10, torch.device("cpu"), precision)), time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="runs/bench-train-step")
    args = ap.parse_args()
    tune_cpu_allocator()  # as the trainer does on a CPU; every variant below, the peer included, runs with it
    demo = RECIPES["demo"]
    tcfg = TrainConfig(**{k: v for k, v in demo.items() if k != "epochs"}, precision=args.precision, epochs=1)
    mcfg = get_config(demo["model"], img_size=28, in_chans=1, num_classes=10, **demo["model_args"])
    b, dev = tcfg.batch_size, torch.device("cpu")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    timing = dict(warmup=3, iters=args.steps, repeats=3)
    res = {"machine": machine_info(), "precision": args.precision, "batch": b, "model": mcfg.to_dict(), "ms": {}}
    res["ms"]["GEMMs alone (forward and backward)"] = 1e3 * gemm_seconds(gemm_shapes(mcfg, b), dtype)
    for label, muon, comp in (("trainer, torch Muon (before)", "torch", False),
                              ("trainer, batched Muon", "batched", False),
                              ("trainer, batched Muon, torch.compile", "batched", True)):
        step, first = trainer_step(tcfg, mcfg, args.precision, muon, comp)
        res["ms"][label] = 1e3 * time_call(step, dev, **timing)
        res.setdefault("first_step_s", {})[label] = first
    try:
        res["ms"]["plain loop, timm MlpMixer"] = 1e3 * time_call(timm_plain_step(mcfg, b), dev, **timing)
    except ImportError:
        pass
    gemm = res["ms"]["GEMMs alone (forward and backward)"]
    peer = res["ms"].get("plain loop, timm MlpMixer")
    print(f"demo model, batch {b}, {args.precision}, {machine_info()['cpu']}:")
    for label, ms in res["ms"].items():
        vs_peer = f", {peer / ms:.2f}x the plain timm loop" if peer and "trainer" in label else ""
        print(f"  {label:<40} {ms:7.1f} ms  {b / ms * 1e3:6.0f} img/s  {ms / gemm:.2f}x its GEMMs{vs_peer}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
