"""Argument helpers the subcommands share."""

from __future__ import annotations

import argparse


def add_preprocess(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mean", type=float, nargs="+", metavar="M",
                   help="input mean per channel, for weights that do not say theirs (a bare timm state dict)")
    p.add_argument("--std", type=float, nargs="+", metavar="S", help="input std per channel (see --mean)")


def preprocess_overrides(args: argparse.Namespace) -> dict:
    return {k: tuple(getattr(args, k)) for k in ("mean", "std") if getattr(args, k)}


def add_trust_compiled(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-compiled", action="store_true",
                   help="allow loading a .pt2 package, which is native code that runs when loaded (only for "
                        "files you made or trust); .onnx, .xml and checkpoints never run code from the file")


def load_for_inference(src: str, args: argparse.Namespace):
    """A PyTorch model from any checkpoint, or an exported .onnx/.xml/.pt2 file behind the same interface.
    `--precision bf16` runs an OpenVINO IR with OpenVINO's bf16 hint (an int8 IR: what NNCF left
    unquantised in bf16), as it runs a PyTorch model under bf16 autocast."""
    from ..export.runtime import is_exported, load_exported
    from ..weights.load import from_pretrained

    if is_exported(src):
        precision = "bf16" if getattr(args, "precision", None) == "bf16" and str(src).endswith(".xml") else "f32"
        return load_exported(src, trust_compiled=getattr(args, "trust_compiled", False), precision=precision)
    return from_pretrained(src, **preprocess_overrides(args))


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, refused with a message naming the value otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; it must be at least 1")
    return value


def add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist (without it, an "
                                                            "existing output is never overwritten)")


def refuse_existing(paths, overwrite: bool) -> None:
    """One message when an output exists and --overwrite was not given: results are never replaced
    unasked (the same rule in convert, export and eval)."""
    from pathlib import Path

    from ..errors import MixerlabError

    if overwrite:
        return
    for p in map(Path, paths):
        if p.is_file() or (p.is_dir() and any(p.iterdir())):
            raise MixerlabError(f"{p} exists already; pass --overwrite to replace it")


class _OldName(argparse.Action):
    """An option's old name: still read, with one line on stderr naming the new one."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        import sys

        print(f"note: {option_string} is now {self.new} (the old name still works for now)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_old_name(p: argparse.ArgumentParser, old: str, new: str, dest: str, **kw) -> None:
    """Accept `old` for the option now called `new` (same dest and type), hidden from --help."""
    p.add_argument(old, dest=dest, action=_OldName, new=new, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw)
