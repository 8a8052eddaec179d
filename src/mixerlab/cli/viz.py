"""`mixerlab viz`: the token-mixing and stem figures of any Mixer checkpoint."""

from __future__ import annotations

import argparse


def add_viz(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="anything from_pretrained reads: official npz, timm file, a run folder, ...")
    p.add_argument("--out", default="viz", help="folder for the PNG figures and their JSON")
    p.add_argument("--blocks", type=int, nargs="+", help="which Mixer layers (default: the first three)")


def run_viz(args: argparse.Namespace) -> int:
    from ..viz.figures import visualize
    from ..weights.load import from_pretrained

    written = visualize(from_pretrained(args.src), args.out, args.blocks)
    print(f"wrote {len(written['files'])} files to {args.out}: {', '.join(written['files'])}")
    return 0
