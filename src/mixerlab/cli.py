"""The `mixerlab` command line. Each subcommand is a (register, run) pair; heavy imports happen inside
`run`, so `mixerlab --help` stays fast. New subcommands are added to COMMANDS."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from .errors import MixerlabError


def _add_preprocess(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="input mean per channel, for weights that do not say theirs (a bare timm state dict)")
    p.add_argument("--std", type=float, nargs="+", metavar="S", help="input std per channel (see --mean)")


def _preprocess(args: argparse.Namespace) -> dict:
    return {k: tuple(getattr(args, k)) for k in ("mean", "std") if getattr(args, k)}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, refused with a message naming the value otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; it must be at least 1")
    return value


# ------------------------------------------------------------------------------------------ info
def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a model name or checkpoint path; all models when omitted")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _run_info(args: argparse.Namespace) -> int:
    from .models.flops import count_macs, count_params
    from .models.registry import create_model as create_random_model
    from .models.registry import list_models
    from .weights.load import from_pretrained

    def describe(name: str, model) -> dict:
        cfg = model.config
        return {
            "name": name, "arch": cfg.arch, "params": count_params(model),
            "gmacs": round(count_macs(model) / 1e9, 3), "img_size": list(cfg.img_size),
            "patch_size": cfg.patch_size, "num_patches": cfg.num_patches, "config": cfg.to_dict(),
        }

    if args.name is None:
        import torch

        rows = []
        for n in list_models():
            with torch.device("meta"):  # no memory, no init time: shapes are all we need
                rows.append(describe(n, create_random_model(n)))
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'model':<16} {'params':>14} {'GMACs':>8} {'img':>9} {'patch':>5} {'tokens':>6}")
        for r in rows:
            size = "x".join(map(str, r["img_size"]))
            print(f"{r['name']:<16} {r['params']:>14,} {r['gmacs']:>8.2f} {size:>9} "
                  f"{r['patch_size']:>5} {r['num_patches']:>6}")
        return 0
    model = create_random_model(args.name) if args.name in list_models() else from_pretrained(args.name)
    info = describe(args.name, model)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{info['name']}: {info['arch']}, {info['params']:,} parameters, {info['gmacs']} GMACs/image")
        for k, v in info["config"].items():
            print(f"  {k:<18} {v}")
    return 0


# --------------------------------------------------------------------------------------- convert
def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="any checkpoint from_pretrained reads (npz, timm .pth/.safetensors, folder)")
    p.add_argument("dst", help="output: a folder (mixerlab), a .pth/.safetensors file (timm) or a .npz")
    p.add_argument("--to", choices=["mixerlab", "timm", "official"], required=True)
    p.add_argument("--img-size", type=int, nargs="+", help="also resize the token mixing to this size")


def _run_convert(args: argparse.Namespace) -> int:
    from .models.serialization import save_pretrained
    from .weights.load import from_pretrained
    from .weights.official import save_official
    from .weights.timm import save_timm

    size = tuple(args.img_size) if args.img_size else None
    model = from_pretrained(args.src, img_size=size[0] if size and len(size) == 1 else size)
    if args.to == "mixerlab":
        save_pretrained(model, args.dst)
    elif args.to == "timm":
        save_timm(model, args.dst)
    else:
        if model.config.arch != "mixer":
            raise MixerlabError("only MLP-Mixer models have an official npz layout")
        save_official(model, args.dst)
    print(f"wrote {args.dst} ({args.to})")
    return 0


# ----------------------------------------------------------------------------------------- train
def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _add_train(p: argparse.ArgumentParser) -> None:
    import dataclasses
    import typing

    from .training.config import CHOICES, RENAMED, TrainConfig
    from .training.recipes import RECIPES

    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="preset: scratch (paper pre-training), finetune (paper fine-tuning), demo")
    p.add_argument("--config", help="YAML, TOML or JSON file of training options (flags win over it)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where it stopped")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, e.g. --model-arg depth=6 (repeatable)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("recipe", "model_args"):
            continue
        # the old names of renamed options stay as aliases
        flags = ["--" + n.replace("_", "-") for n in [f.name] + [o for o, r in RENAMED.items() if r == f.name]]
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is None:  # optional fields: the type is the non-None member of the union
            kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), str)
            p.add_argument(*flags, dest=f.name, type=kind, default=None)
        elif isinstance(default, bool):
            p.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, tuple):
            p.add_argument(*flags, dest=f.name, type=float, nargs=len(default), default=None)
        elif isinstance(default, (int, float)):
            p.add_argument(*flags, dest=f.name, type=type(default), default=None, help=f"default {default}")
        else:
            p.add_argument(*flags, dest=f.name, default=None, choices=CHOICES.get(f.name), help=f"default {default}")


def _run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from .training.config import TrainConfig
    from .training.loop import train
    from .training.recipes import resolve

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if f.name not in ("recipe", "model_args")}
    if args.model_arg:
        pairs = [kv.split("=", 1) for kv in args.model_arg]
        if any(len(kv) != 2 for kv in pairs):
            raise ValueError("--model-arg takes KEY=VALUE")
        flags["model_args"] = {k.replace("-", "_"): _parse_value(v) for k, v in pairs}
    if args.resume:
        overrides = {k: v for k, v in flags.items() if v is not None}
        overrides.update({k: True for k in ("recipe", "config") if getattr(args, k)})  # refused by train()
        summary = train(resume=args.resume, resume_overrides=overrides)
    else:
        summary = train(resolve(args.recipe, args.config, **flags))
    if summary.get("stopped"):
        if summary["resume_command"]:
            print(f"stopped; resume with: {summary['resume_command']}")
        return 130
    if summary:
        print(json.dumps(summary, indent=2))
    return 0


# ------------------------------------------------------------------------------------ eval/predict
def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a run folder, checkpoint, or anything from_pretrained reads")
    p.add_argument("--data", default="fashion-mnist", help="dataset name or ImageFolder path")
    p.add_argument("--data-dir")
    p.add_argument("--split", choices=["val", "train"], default="val")
    p.add_argument("--batch-size", type=positive_int, default=512)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="folder for eval.json and confusion.png (default: beside SRC or ./eval)")
    _add_preprocess(p)
    p.add_argument("--map-by-index", action="store_true",
                   help="score class i of the data as class i of the model even when their names differ")
    p.add_argument("--tta", action="store_true",
                   help="also average each image with its mirror (flip test-time augmentation); the "
                        "results go to eval_tta.json beside eval.json")


def _run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data.datasets import load_dataset
    from .evaluate import check_classes, evaluate
    from .io_utils import atomic_write_json
    from .perf.runtime import pick_device
    from .training.report import plot_confusion
    from .weights.load import from_pretrained

    model = from_pretrained(args.src, **_preprocess(args))
    size = tuple(model.config.img_size)
    data = load_dataset(args.data, args.data_dir, img_size=size)
    check_classes(model, data.classes, args.src, args.data, args.map_by_index)
    device = pick_device(args.device)
    model.to(device)
    res = evaluate(model, getattr(data, args.split), data.num_classes, device, args.batch_size,
                   args.precision, progress=True, tta=args.tta)
    out = Path(args.out) if args.out else (Path(args.src) if Path(args.src).is_dir() else Path("eval"))
    out.mkdir(parents=True, exist_ok=True)
    names = getattr(model, "class_names", None) or data.classes
    res["per_class"] = dict(zip(names, res["per_class"]))
    res.update({"source": str(args.src), "data": args.data, "split": args.split})
    stem = "eval_tta" if args.tta else "eval"  # a TTA result never overwrites the plain one
    atomic_write_json(out / f"{stem}.json", res)
    plot_confusion(res["confusion"], names, out / f"{stem}_confusion.png")
    print(f"top-1 {100 * res['top1']:.2f}%  top-5 {100 * res['top5']:.2f}%  loss {res['loss']:.4f}  "
          f"({res['count']} images{', flip TTA' if args.tta else ''})")
    for c, a in res["per_class"].items():
        print(f"  {c:<20} {100 * a:6.2f}%")
    print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}_confusion.png'}")
    return 0


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a run folder, checkpoint, or anything from_pretrained reads")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--topk", type=positive_int, default=5, help="how many classes to show (at least 1)")
    _add_preprocess(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="auto")


def _run_predict(args: argparse.Namespace) -> int:
    from .perf.runtime import pick_device
    from .predict import list_image_files, predict_files
    from .weights.load import from_pretrained

    model = from_pretrained(args.src, **_preprocess(args))
    files = list_image_files(args.images)
    results = predict_files(model, files, args.topk, str(pick_device(args.device)),
                            getattr(model, "class_names", None))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['file']}: {r['error']}")
                continue
            top = ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in r["top"])
            print(f"{r['file']}: {top}")
    return 1 if any("error" in r for r in results) else 0


# ----------------------------------------------------------------------------------------- bench
def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help="mixerlab models to compare (default: S/16 and B/16 Mixers and ViTs, plus timm's)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolutions", type=int, nargs="+", default=[112, 224, 448])
    p.add_argument("--scale-models", nargs="+", default=["mixer_b16_224", "vit_b16_224"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="fewer repeats (for a smoke test)")
    p.add_argument("--out", default="runs/bench", help="folder for bench.json, bench.md and bench.png")


def _run_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .perf.bench import run_default
    from .perf.runtime import pick_device

    models = [(m, "mixerlab") for m in args.models] if args.models else None
    res = run_default(Path(args.out), args.batch, str(pick_device(args.device)), args.quick, models,
                      tuple(args.resolutions), tuple(args.scale_models), tuple(args.precisions))
    for name, slope in res["loglog_slope"].items():
        print(f"log-log slope of time against patches, {name}: {slope:.2f}")
    print(f"wrote {args.out}/bench.json, bench.md, bench.png")
    return 0


# ----------------------------------------------------------------------------------------- table

COMMANDS: list[tuple[str, str, Callable, Callable]] = [
    ("info", "list models, or describe one model or checkpoint", _add_info, _run_info),
    ("convert", "convert weights between mixerlab, timm and official formats", _add_convert, _run_convert),
    ("train", "train from scratch or fine-tune (torchrun for several processes)", _add_train, _run_train),
    ("eval", "top-1/top-5, per-class accuracy and a confusion matrix", _add_eval, _run_eval),
    ("predict", "classify image files", _add_predict, _run_predict),
    ("bench", "inference and training throughput, Mixer beside ViT, and scaling with resolution",
     _add_bench, _run_bench),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixerlab", description="MLP-Mixer in PyTorch: models, weights, training, benchmarks."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args._run(args) or 0)
    except (MixerlabError, ValueError, FileNotFoundError) as e:
        if args.verbose:
            raise
        print(f"mixerlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
