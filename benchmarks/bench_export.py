"""Exported models side by side in one run: ONNX Runtime fp32 and int8 and OpenVINO fp32 and int8
(NNCF, where the openvino extra is installed) against optimize_for_inference, eager PyTorch and, on a
CPU with native bf16, our bf16 path (the fastest int8 over it is printed: #27 asks 1.6x), for
Mixer-B/16 (random weights: speed does not depend on them) and a trained small model; and the int8
accuracy change on Fashion-MNIST for a trained run.

    .venv/bin/python benchmarks/bench_export.py [--run runs/demo] [--batches 1 8 32] [--out runs/bench-export]

ONNX Runtime runs with intra_op_num_threads = the number of cores and its default sequential
execution, the setting its docs recommend for one model on one machine. Prints img/s and the ratios,
writes results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import mixerlab
from mixerlab.export.onnx import export_onnx
from mixerlab.export.quantize import quantize_onnx
from mixerlab.export.runtime import load_exported
from mixerlab.perf.bench import inference_throughput
from mixerlab.perf.gelu import gelu_as_erf
from mixerlab.perf.inference import optimize_for_inference
from mixerlab.perf.runtime import native_bf16
from mixerlab.perf.timing import machine_info


def speeds(name: str, model: torch.nn.Module, out: Path, batches: list[int], compile_: bool) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    fp32, int8 = out / f"{name}.onnx", out / f"{name}-int8.onnx"
    if not fp32.exists():
        export_onnx(model, fp32, name)
    if not int8.exists():
        quantize_onnx(fp32, int8, "dynamic")
    threads = os.cpu_count()
    runners = {"onnxruntime fp32": load_exported(fp32, threads), "onnxruntime int8": load_exported(int8, threads),
               "eager fp32": model}
    runners.update(openvino_runners(name, model, out, fp32, threads))
    dev = torch.device("cpu")
    if native_bf16(dev):  # int8 is worth its accuracy check only if it beats our own bf16 (#27: 1.6x)
        runners["mixerlab bf16 (eager)"] = optimize_for_inference(model, torch.bfloat16, compile=False, backends=())
    rows = []
    cfg = model.config
    for b in batches:
        x = torch.randn(b, cfg.in_chans, *cfg.img_size)
        timing = dict(warmup=2, iters=3, repeats=3) if b > 1 else dict(warmup=3, iters=10, repeats=3)
        res = {k: inference_throughput(m, x, dev, **timing) for k, m in runners.items()}
        if compile_:
            for dtype, label in ((torch.float32, "optimize_for_inference fp32"),
                                 (torch.bfloat16, "optimize_for_inference bf16")):
                torch._dynamo.reset()  # each call compiles afresh: stay under dynamo's recompile limit
                fast = mixerlab.optimize_for_inference(model, dtype, example=x)
                res[label] = inference_throughput(fast, x, dev, **timing)
        for k, v in res.items():
            rows.append({"model": name, "batch": b, "runtime": k, "img_s": v})
            print(f"{name:<14} batch {b:>3}  {k:<30} {v:9.1f} img/s  ({v / res['onnxruntime fp32']:.2f}x ORT fp32)",
                  flush=True)
        if "mixerlab bf16 (eager)" in res:
            best8 = max((k for k in res if "int8" in k), key=res.get)
            print(f"{name:<14} batch {b:>3}  fastest int8 ({best8}) over our bf16: "
                  f"{res[best8] / res['mixerlab bf16 (eager)']:.2f}x eager"
                  + (f", {res[best8] / res['optimize_for_inference bf16']:.2f}x optimize_for_inference"
                     if "optimize_for_inference bf16" in res else ""), flush=True)
    return rows


def openvino_runners(name: str, model: torch.nn.Module, out: Path, fp32: Path, threads: int) -> dict:
    """OpenVINO fp32 and int8 IRs of `model` (int8 calibrated on 64 noise images: speed only), loaded."""
    try:
        from mixerlab.export.openvino import export_openvino
    except ImportError:
        return {}
    cfg = model.config
    ir, ir8, ir8t = out / f"{name}.xml", out / f"{name}-int8.xml", out / f"{name}-int8-tensor.xml"
    try:
        if not ir.exists():
            export_openvino(model, ir, name, onnx_file=fp32)
        calib = [torch.randn(8, cfg.in_chans, *cfg.img_size).numpy() for _ in range(8)]
        for path, per_tensor in ((ir8, False), (ir8t, True)):
            if not path.exists():
                export_openvino(model, path, name, int8=True, calibration=calib, onnx_file=fp32,
                                per_tensor_weights=per_tensor)
    except mixerlab.MixerlabError as e:
        print(f"no OpenVINO rows: {e}")
        return {}
    files = [("openvino int8", ir8), ("openvino int8 per-tensor", ir8t)]
    ir8e = out / f"{name}-int8-tensor-erf.xml"
    if ir8e.exists() or write_erf_int8(model, calib, ir8e, name):
        files.append(("openvino int8 per-tensor erf", ir8e))
    runners = {"openvino fp32": load_exported(ir, threads)}
    for label, path in files:
        runners[label] = load_exported(path, threads)
        if native_bf16(torch.device("cpu")):  # the int8 graph with what NNCF left unquantised in bf16
            runners[f"{label}, bf16 elsewhere"] = load_exported(path, threads, precision="bf16")
    return runners


def write_erf_int8(model: torch.nn.Module, calibration: list, path: Path, source: str) -> bool:
    """The per-tensor int8 IR that optimize_for_inference's int8 also builds from the model with its
    tanh GELUs as erf (no CLI export writes it; `mixerlab eval` reads it like any IR); False when the
    model has no tanh GELU."""
    from mixerlab.export.openvino import export_openvino

    erf = gelu_as_erf(model)
    if erf is None:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx = path.with_suffix(".onnx")
    export_onnx(erf, onnx, source)
    export_openvino(erf, path, source, int8=True, calibration=calibration, onnx_file=onnx, per_tensor_weights=True)
    return True


def accuracy(run: str, out: Path) -> dict:
    """Test top-1 of the run in PyTorch, as ONNX fp32 and int8 and as OpenVINO fp32 and int8 (NNCF,
    calibrated on 256 training images) (mixerlab eval on each)."""
    res = {}
    exports = {"onnx fp32": (out / "run.onnx", []), "onnx int8": (out / "run-int8.onnx", ["--int8"]),
               "openvino fp32": (out / "run.xml", []),
               "openvino int8": (out / "run-int8.xml", ["--int8", "--data", "fashion-mnist"]),
               "openvino int8 per-tensor": (out / "run-int8-tensor.xml",
                                            ["--int8", "--int8-weights", "per-tensor", "--data", "fashion-mnist"])}
    evals = [("pytorch", run, [])] + [(k, str(v[0]), []) for k, v in exports.items()]
    int8_irs = {k: exports[k][0] for k in ("openvino int8", "openvino int8 per-tensor")}
    erf = out / "run-int8-tensor-erf.xml"
    if erf.exists() or write_erf_int8(*_model_and_calibration(run), erf, run):
        evals.append(("openvino int8 per-tensor erf", str(erf), []))
        int8_irs["openvino int8 per-tensor erf"] = erf
    if native_bf16(torch.device("cpu")):  # the int8 IR with the bf16 hint, as optimize_for_inference tries it
        evals += [(f"{k}, bf16 elsewhere", str(path), ["--precision", "bf16"]) for k, path in int8_irs.items()]
    for label, src, eval_args in evals:
        if label in exports and not Path(src).exists():  # a "bf16 elsewhere" label scores the file made above
            subprocess.run([sys.executable, "-m", "mixerlab", "export", run, src, *exports[label][1]], check=True)
        ev = out / f"eval-{label.replace(' ', '-').replace(',', '')}"
        subprocess.run([sys.executable, "-m", "mixerlab", "eval", src, "--data", "fashion-mnist", "--out", str(ev),
                        *eval_args], check=True, capture_output=True)
        res[label] = json.loads((ev / "eval.json").read_text())["top1"]
        print(f"Fashion-MNIST test top-1, {label:<29} {100 * res[label]:.2f}% "
              f"({100 * (res[label] - res['pytorch']):+.2f} points)", flush=True)
    return res


def _model_and_calibration(run: str) -> tuple[torch.nn.Module, list]:
    """The run's model and the 256 Fashion-MNIST training images `mixerlab export --int8 --data
    fashion-mnist` calibrates it on."""
    from argparse import Namespace

    from mixerlab.cli.export import _calibration

    model = mixerlab.from_pretrained(run).eval()
    return model, _calibration(model, Namespace(data="fashion-mnist", data_dir=None, calibration_images=256))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/demo", help="a trained run for the accuracy check (make demo)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--out", default="runs/bench-export")
    p.add_argument("--no-compile", action="store_true", help="skip optimize_for_inference (compiles take minutes)")
    args = p.parse_args()
    out = Path(args.out)
    mixerlab.tune_cpu_allocator()
    results = {"machine": machine_info(), "rows": []}
    if Path(args.run).exists():
        results["accuracy"] = accuracy(args.run, out)
        small = mixerlab.from_pretrained(args.run).eval()
        results["rows"] += speeds(Path(args.run).name, small, out, args.batches, not args.no_compile)
    b16 = mixerlab.create_model("mixer_b16_224").eval()
    torch.nn.init.normal_(b16.head.weight, std=0.01)
    results["rows"] += speeds("mixer_b16_224", b16, out, args.batches, not args.no_compile)
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
