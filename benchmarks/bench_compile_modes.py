"""fp32 inference of Mixer-B/16 (224 px) against its GEMM-bound limit: eager, torch.compile with
freezing, and torch.compile(mode="max-autotune") with freezing, side by side in one process.

This shows what each compile mode buys on your CPU, and which GEMM kernel autotuning picks (Inductor
prints its choices). The bound is the model's FLOPs at the best GEMM rate measured in this run.

    .venv/bin/python benchmarks/bench_compile_modes.py [--batch 32] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import mixerlab
from mixerlab.perf.bench import inference_throughput
from mixerlab.perf.gemm import gemm_rates
from mixerlab.perf.timing import machine_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model", default="mixer_b16_224")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    mixerlab.tune_cpu_allocator()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    print(json.dumps(machine_info()))
    torch.manual_seed(0)
    model = mixerlab.create_model(args.model).to(dev, dtype).eval().requires_grad_(False)
    x = torch.randn(args.batch, model.config.in_chans, *model.config.img_size, device=dev, dtype=dtype)
    peak = gemm_rates(dtype, dev)["best_gflops"]
    bound = peak * 1e9 / mixerlab.count_flops(model)
    timing = dict(warmup=1, iters=2, repeats=3)

    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # weights become constants, so Inductor may pre-pack them
    rows = {"eager": (inference_throughput(model, x, dev, **timing), 0.0)}
    for mode in ("default", "max-autotune"):
        torch._dynamo.reset()
        t = time.perf_counter()
        compiled = torch.compile(model, mode=mode, dynamic=False)
        with torch.inference_mode():
            compiled(x)
        rows[f"compile {mode}"] = (inference_throughput(compiled, x, dev, **timing), time.perf_counter() - t)
    print(f"\n{args.model} {args.dtype} batch {args.batch}: GEMM rate {peak:.1f} GFLOP/s, bound {bound:.2f} img/s")
    for name, (img_s, compile_s) in rows.items():
        print(f"  {name:<22} {img_s:7.2f} img/s  {img_s / bound:6.1%} of the bound  compile {compile_s:5.1f} s")


if __name__ == "__main__":
    main()
