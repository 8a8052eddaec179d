"""`mixerlab export`: ONNX (fp32, int8), OpenVINO IR (fp32, int8) and AOTInductor files."""

from __future__ import annotations

import argparse

from .common import add_overwrite, add_preprocess, positive_int, preprocess_overrides, refuse_existing


# ---------------------------------------------------------------------------------------- export
def add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="anything from_pretrained reads: a run folder, official npz, timm file, ...")
    p.add_argument("out", help="the file to write: OUT.onnx (ONNX Runtime), OUT.xml (OpenVINO IR, with OUT.bin) "
                               "or OUT.pt2 (AOTInductor)")
    p.add_argument("--format", choices=list(FORMATS), help="default: from OUT's suffix")
    p.add_argument("--int8", nargs="?", const="", type=_int8_mode, metavar="{dynamic,static}",
                   help="int8 Linear layers. ONNX: dynamic (the default) or static, calibrated on --data; "
                        "OpenVINO: static (NNCF, calibrated on --data)")
    p.add_argument("--int8-weights", choices=["per-channel", "per-tensor"], default="per-channel",
                   help="OpenVINO int8: one weight scale per output row (the default) or one per tensor, which "
                        "runs faster where token mixing's products cannot fold per-row scales (measure the "
                        "accuracy with mixerlab eval)")
    p.add_argument("--data", help="calibration images for --int8 static: a dataset name or image folder")
    p.add_argument("--data-dir")
    p.add_argument("--calibration-images", type=positive_int, default=256)
    add_preprocess(p)
    add_overwrite(p)


FORMATS = {"onnx": ".onnx", "openvino": ".xml", "pt2": ".pt2"}


def _int8_mode(text: str) -> str:
    """argparse type of --int8: a mode, or "" (the flag alone: the format's default, chosen later)."""
    if text not in ("", "dynamic", "static"):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from 'dynamic', 'static')")
    return text


def run_export(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from ..export.onnx import ExportError, export_onnx
    from ..weights.load import from_pretrained

    out = Path(args.out)
    fmt = args.format or next((f for f, suffix in FORMATS.items() if suffix == out.suffix), None)
    if fmt is None or out.suffix != FORMATS[fmt]:
        raise ExportError(f"{out}: write an ONNX export to a .onnx file, an OpenVINO one to a .xml file and a "
                          f"compiled one to a .pt2 file")
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; give the file to write")
    refuse_existing([out, out.with_suffix(".bin")] if fmt == "openvino" else [out], args.overwrite)
    if args.int8 is not None and fmt == "pt2":
        raise ExportError("--int8 is for ONNX and OpenVINO exports; use OUT.onnx or OUT.xml")
    if args.int8 == "dynamic" and fmt == "openvino":
        raise ExportError("--int8 dynamic is ONNX Runtime's; OpenVINO's int8 (NNCF) is static: pass "
                          "--int8 static --data DATA, or write OUT.onnx")
    if args.int8_weights != "per-channel" and not (args.int8 is not None and fmt == "openvino"):
        raise ExportError(f"--int8-weights {args.int8_weights} is for OpenVINO int8 exports: write OUT.xml with --int8")
    if args.int8 == "":
        args.int8 = "static" if fmt == "openvino" else "dynamic"
    if args.int8 == "static" and not args.data:
        raise ExportError(f"--int8 {'' if fmt == 'openvino' else 'static '}needs calibration images: pass --data "
                          f"(a dataset name or image folder)")
    model = from_pretrained(args.src, **preprocess_overrides(args)).eval()
    if fmt == "openvino":
        from ..export.openvino import export_openvino

        calib = _calibration(model, args) if args.int8 else None
        report = export_openvino(model, out, str(args.src), int8=bool(args.int8), calibration=calib,
                                 per_tensor_weights=args.int8_weights == "per-tensor")
        print(f"wrote {out} and {Path(report['weights']).name} (openvino {report['openvino_version']}, "
              f"{report['dtype']})")
        err, what = report["max_abs_logit_error"], "OpenVINO" if args.int8 else "OpenVINO (f32)"
        print(f"checked: {what} against PyTorch on a batch of 7: max abs logit difference {err:.2e}"
              + (f"; the fp32 graph before int8: {report['fp32_check']['max_abs_logit_error']:.2e} (int8 changes "
                 f"the numbers; `mixerlab eval {out} --data ...` measures the accuracy)" if args.int8 else ""))
        return 0
    if fmt == "pt2":
        from ..export.aoti import export_pt2

        report = export_pt2(model, out, str(args.src))
    elif not args.int8:
        report = export_onnx(model, out, str(args.src))
    else:
        from ..export.onnx import check_onnx
        from ..export.quantize import quantize_onnx

        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", str(args.src))
            calib = _calibration(model, args) if args.int8 == "static" else None
            report = {**quantize_onnx(fp32["path"], out, args.int8, calib), "fp32_check": fp32}
        print(f"int8 against PyTorch on the same batch: max abs logit difference {check_onnx(out, model):.2e} "
              f"(int8 changes the numbers; `mixerlab eval {out} --data ...` measures the accuracy)")
    print(f"wrote {out} ({report['format']}, {report['dtype']})")
    err = report.get("max_abs_logit_error", report.get("fp32_check", {}).get("max_abs_logit_error"))
    print(f"checked: max abs logit difference against PyTorch on a batch of 7: {err:.2e}"
          + (" (the fp32 graph, before int8)" if args.int8 else ""))
    return 0


def _calibration(model, args: argparse.Namespace):
    """Batches of normalised float32 images from --data for static int8 calibration."""
    import itertools

    import torch

    from ..data.sources import load_dataset
    from ..data.transforms import prepare
    data = load_dataset(args.data, args.data_dir, img_size=tuple(model.config.img_size))
    n = args.calibration_images
    if data.streaming:  # a random sample of a folder, or the first images of (shuffled) shards
        split = data.train.subset(n, seed=0) if hasattr(data.train, "subset") else data.train
        images = torch.cat([x for _, x, _, _ in itertools.islice(split.eval_batches(model.config, 32), -(-n // 32))])
    else:
        images = data.train.images
        images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]]
    return [prepare(b, model, torch.device("cpu")).numpy() for b in images[:n].split(32)]
