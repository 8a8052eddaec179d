"""The `mixerlab` command line. Each subcommand is a (register, run) pair; heavy imports happen inside
`run`, so `mixerlab --help` stays fast. New subcommands are added to COMMANDS."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from ..errors import MixerlabError
from .bench import add_bench, run_bench
from .common import positive_int
from .data import add_data, run_data
from .export import add_export, run_export
from .features import add_embed, add_fewshot, run_embed, run_fewshot
from .inference import add_eval, add_predict, run_eval, run_predict
from .models import add_convert, add_info, add_push, run_convert, run_info, run_push
from .serve import add_serve, run_serve
from .train import add_train, run_train
from .viz import add_viz, run_viz

# ----------------------------------------------------------------------------------------- table

COMMANDS: list[tuple[str, str, Callable, Callable]] = [
    ("info", "list models, or describe one model or checkpoint", add_info, run_info),
    ("convert", "convert weights between mixerlab, timm, official and Hub formats", add_convert, run_convert),
    ("push", "upload a model to the Hugging Face Hub as a timm repo with a model card", add_push, run_push),
    ("train", "train from scratch or fine-tune (--processes N, or torchrun, for several processes)", add_train,
     run_train),
    ("data", "pack an image folder into WebDataset shards for streaming", add_data, run_data),
    ("eval", "top-1/top-5, per-class accuracy and a confusion matrix", add_eval, run_eval),
    ("predict", "classify image files", add_predict, run_predict),
    ("fewshot", "the paper's few-shot linear evaluation (and DINO's kNN) of a model's features, no head trained",
     add_fewshot, run_fewshot),
    ("embed", "write the pre-logit features of every image of a dataset (safetensors + index.jsonl)", add_embed,
     run_embed),
    ("export", "write an ONNX or OpenVINO (fp32 or int8) or AOTInductor (.pt2) file, checked against PyTorch",
     add_export, run_export),
    ("serve", "an HTTP inference server with dynamic batching (FastAPI on uvicorn, or Ray Serve)",
     add_serve, run_serve),
    ("viz", "draw what a Mixer learned: token-mixing units and stem filters (paper Figures 5-7)", add_viz, run_viz),
    ("bench", "inference and training throughput, Mixer beside ViT, and scaling with resolution",
     add_bench, run_bench),
]


# the commands that compute: --threads is set for them
COMPUTING = ("train", "eval", "predict", "fewshot", "embed", "export", "serve", "viz", "bench", "convert", "push")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mixerlab")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mixerlab", description="MLP-Mixer in PyTorch: models, weights, training, benchmarks."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"mixerlab {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.add_argument("--threads", type=positive_int, default=None,
                       help="intra-op threads (default: OMP_NUM_THREADS if set, else the cores this process may "
                            "use, from its CPU affinity and cgroup quota)")
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args._argv = argv  # `train --processes N` starts its workers with the same arguments
    # mixerlab's own INFO lines, and only warnings from libraries: ONNX Runtime's quantiser logs a line
    # per node on the root logger, the ONNX exporter one per rewritten node (all of them with --verbose).
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mixerlab").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:  # also where the root logger was configured before (a host program, a test)
        for name in ("onnxscript", "onnx_ir", "torch._inductor.package"):
            logging.getLogger(name).setLevel(logging.WARNING if name != "torch._inductor.package" else logging.ERROR)
    if args.command in COMPUTING:
        from ..perf.threads import busy_warning, configure

        threads = configure(args.threads)
        if (warning := busy_warning(threads)) is not None:
            logging.getLogger("mixerlab").warning(warning)
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
