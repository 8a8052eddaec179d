"""`mixerlab bench`: throughput, Mixer beside ViT."""

from __future__ import annotations

import argparse


# ----------------------------------------------------------------------------------------- bench
def add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help="mixerlab models to compare (default: S/16 and B/16 Mixers and ViTs, plus timm's)")
    from .common import add_old_name, positive_int

    p.add_argument("--batch-size", dest="batch", type=positive_int, default=None,
                   help="images per timed call (default 32; 8 with --quick)")
    add_old_name(p, "--batch", "--batch-size", "batch", type=positive_int)
    p.add_argument("--resolutions", type=int, nargs="+", help="default 112 224 448 (--scaling: 224 448 896 1344)")
    p.add_argument("--scale-models", nargs="+", default=None,
                   help="models of the resolution sweep (default mixer_b16_224 vit_b16_224; S/16 with --quick)")
    p.add_argument("--precision", dest="precisions", nargs="+", default=None, choices=["fp32", "bf16"],
                   help="one or more (default: fp32, and bf16 where the hardware computes it: emulated on other "
                        "CPUs, it runs many times slower than fp32)")
    add_old_name(p, "--precisions", "--precision", "precisions", nargs="+", choices=["fp32", "bf16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true",
                   help="a look in about a minute: S/16 Mixer and ViT only, batch 8, resolutions 112 224, fewer "
                        "repeats; --optimized without torch.compile and the exported runtimes")
    p.add_argument("--optimized", action="store_true",
                   help="also time each mixerlab model through optimize_for_inference (the fastest path "
                        "this machine has: eager, torch.compile, and in fp32 oneDNN or ONNX Runtime; building the "
                        "candidates takes one to two minutes for B/16)")
    p.add_argument("--runtimes", nargs="*", choices=["onnxruntime", "openvino"], default=None,
                   help="also time each mixerlab model exported to these runtimes, where installed (CPU; "
                        "default: both for the default models, none with --models or --quick; give the flag "
                        "alone for none)")
    p.add_argument("--scaling", action="store_true",
                   help="only the resolution sweep, out to where ViT's attention dominates: batch 1, fp32 "
                        "(--precision bf16 for bf16), local log-log slopes against the FLOP model's (default "
                        "resolutions 224 448 896 1344)")
    p.add_argument("--out", default="runs/bench", help="folder for bench.json, bench.md and bench.png")


def _scaling_dtype(precisions: list[str]):
    """fp32 unless only bf16 is asked for: on a CPU every fp32 operation (products and attention alike)
    runs near one rate, which is what a FLOP model assumes; in bf16 attention runs at a fraction of the
    products' rate, so ViT's time grows faster than its FLOPs (docs/benchmarks.md shows both)."""
    import torch

    return torch.float32 if "fp32" in precisions else torch.bfloat16


def _check_resolutions(resolutions: list[int] | None) -> None:
    """Refused before anything is timed: the sweep fits a slope, which takes two sizes or more."""
    from ..errors import ConfigError

    if resolutions is None:
        return
    bad = [r for r in resolutions if r <= 0]
    if bad:
        raise ConfigError(f"--resolutions {' '.join(map(str, bad))}: image sizes must be positive")
    if len(set(resolutions)) < 2:
        raise ConfigError(f"--resolutions {' '.join(map(str, resolutions))}: the resolution sweep fits a slope of "
                          "time against patches and needs at least two different sizes (e.g. --resolutions 224 448)")


def run_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..perf.bench import run_default
    from ..perf.runtime import native_bf16, pick_device

    _check_resolutions(args.resolutions)
    device = pick_device(args.device)
    if args.precisions is None:
        args.precisions = ["fp32", "bf16"] if native_bf16(device) else ["fp32"]
        if len(args.precisions) == 1:
            print("bf16 left out: this machine has no native bf16 (torch would emulate it, many times slower "
                  "than fp32); --precision fp32 bf16 measures it anyway")
    quick_models = ("mixer_s16_224", "vit_s16_224")
    args.scale_models = args.scale_models or list(quick_models if args.quick else ("mixer_b16_224", "vit_b16_224"))
    if args.scaling:
        from ..perf.scaling import run_scaling

        res = run_scaling(Path(args.out), tuple(args.scale_models), tuple(args.resolutions or (224, 448, 896, 1344)),
                          _scaling_dtype(args.precisions), 1, args.quick)
        for label, s in res["series"].items():
            slopes = ", ".join("-" if m is None else f"{m:.2f}" for m in s["slope_measured"])
            model = ", ".join(f"{p:.2f}" for p in s["slope_flops"])
            print(f"{label}: local slopes {slopes} (FLOP model {model})")
        print(f"wrote {args.out}/scaling.json, scaling.md, scaling.png")
        return 0
    names = args.models or (quick_models if args.quick else None)
    models = [(m, "mixerlab") for m in names] if names else None
    runtimes = args.runtimes if args.runtimes is not None else ([] if names else ["onnxruntime", "openvino"])
    res = run_default(Path(args.out), args.batch or (8 if args.quick else 32), str(device), args.quick, models,
                      tuple(args.resolutions or ((112, 224) if args.quick else (112, 224, 448))),
                      tuple(args.scale_models), tuple(args.precisions), optimized=args.optimized,
                      runtimes=tuple(runtimes))
    for name, slope in res["loglog_slope"].items():
        print(f"log-log slope of time against patches, {name}: {slope:.2f}")
    print(f"wrote {args.out}/bench.json, bench.md, bench.png")
    return 0
