"""The `mixerlab` command line. Each subcommand is a (register, run) pair; heavy imports happen inside
`run`, so `mixerlab --help` stays fast. New subcommands are added to COMMANDS."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from .errors import MixerlabError


# ------------------------------------------------------------------------------------------ info
def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a model name or checkpoint path; all models when omitted")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _run_info(args: argparse.Namespace) -> int:
    from . import count_macs, count_params, create_model, from_pretrained, list_models

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
                rows.append(describe(n, create_model(n)))
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'model':<16} {'params':>14} {'GMACs':>8} {'img':>9} {'patch':>5} {'tokens':>6}")
        for r in rows:
            size = "x".join(map(str, r["img_size"]))
            print(f"{r['name']:<16} {r['params']:>14,} {r['gmacs']:>8.2f} {size:>9} "
                  f"{r['patch_size']:>5} {r['num_patches']:>6}")
        return 0
    from .registry import list_models as names

    model = create_model(args.name) if args.name in names() else from_pretrained(args.name)
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
    from . import from_pretrained, save_official, save_pretrained, save_timm

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


# ----------------------------------------------------------------------------------------- table
def _lazy(module: str, name: str) -> Callable:
    def call(*a, **kw):
        import importlib

        return getattr(importlib.import_module(f"mixerlab.{module}"), name)(*a, **kw)

    return call


COMMANDS: list[tuple[str, str, Callable, Callable]] = [
    ("info", "list models, or describe one model or checkpoint", _add_info, _run_info),
    ("convert", "convert weights between mixerlab, timm and official formats", _add_convert, _run_convert),
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
