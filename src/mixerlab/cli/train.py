"""`mixerlab train`: every TrainConfig field is a flag."""

from __future__ import annotations

import argparse
import json
import os

from ..training.launch import LAUNCHED

# ----------------------------------------------------------------------------------------- train
HELP = {
    "stem_init": "the stem's initialisation: default (random), or whiten: from the whitened covariance of the "
                 "training images' patches, as airbench's first layer (Mixers, images in memory)",
    "val_split": "share of the training images held out to choose best.pt on (built-in sets, and a folder without "
                 "val/); 0: none, the last epoch is kept and a built-in set's test images are scored each epoch",
    "stream": "read images from disk as the run trains, in worker processes (default: when the decoded folder "
              "would pass the memory budget; shards always stream)",
    "workers": "decoding processes when streaming (default: the cores less one, at most 8)",
    "memory_budget_gb": "a folder that would take more memory than this decoded is streamed (default: half the "
                        "available memory)",
    "val_data": "validation shards, when --data names training shards (default: the ones dataset.json lists)",
    "random_erase": "probability that a training image gets one random rectangle (2-33%% of its area) replaced "
                    "by noise (random erasing, Zhong et al. 2017; applied after the other augmentations)",
    "crop_scale": "streaming: the smallest area of a random resized crop (default 0.08)",
    "time_budget": "seconds of training (setup and the measuring of the step included, evaluation not): the run "
                   "takes as many steps as fit in them on this machine, measured on a few steps before it starts, "
                   "with the schedule over exactly those; --epochs is then the most it trains",
    "max_steps": "optimiser steps in all: the last epoch is cut short there and the schedule ends with it (a time "
                 "budget writes the steps it found here, in config.json)",
    "compile": "run the step's forward and backward through torch.compile (the first step pays the compile)",
}


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_train(p: argparse.ArgumentParser) -> None:
    import dataclasses
    import typing

    from ..training.config import CHOICES, RENAMED, TrainConfig
    from ..training.recipes import RECIPES
    from .common import positive_int

    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="preset (each option's help gives its value under each): auto (the default: Muon, length, "
                        "warmup and flips from the data), scratch (paper pre-training, AdamW), finetune (paper "
                        "fine-tuning, SGD), demo (make demo's Fashion-MNIST run), speedrun (Fashion-MNIST in 60 s of "
                        "training on this machine: --time-budget 60), best (the most Fashion-MNIST accuracy: 100 "
                        "epochs, hours on 2 CPU cores, resumable)")
    p.add_argument("--config", help="YAML, TOML or JSON file of training options (flags win over it)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR exactly where it stopped")
    p.add_argument("--processes", type=positive_int, default=None, metavar="N",
                   help="train in N processes on this machine (PyTorch DDP, as torchrun would start them; each "
                        "gets cores / N threads); needs --out, and --resume takes the same N")
    p.add_argument("--print-config", action="store_true",
                   help="print the options this command would train with (recipe, then --config, then flags) "
                        "as JSON, and exit; null: chosen from the data when the run starts")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override, e.g. --model-arg depth=6 (repeatable); it changes that one "
                        "argument of the recipe's model and keeps the recipe's others (--print-config shows them)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("recipe", "model_args"):
            continue
        # the old names of renamed options stay as aliases
        flags = ["--" + n.replace("_", "-") for n in [f.name] + [o for o, r in RENAMED.items() if r == f.name]]
        default = f.default if f.default is not dataclasses.MISSING else None
        kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name])
        text = recipe_defaults(f.name, default)
        if f.name in HELP:
            text = HELP[f.name] + (f"; {text}" if text.startswith("default by") else "")
        if kind is bool:
            p.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif isinstance(default, tuple):
            p.add_argument(*flags, dest=f.name, type=float, nargs=len(default), default=None, help=text)
        elif kind in (int, float):
            p.add_argument(*flags, dest=f.name, type=kind, default=None, help=text)
        else:
            p.add_argument(*flags, dest=f.name, default=None, choices=CHOICES.get(f.name), help=text)


def recipe_defaults(name: str, default) -> str:
    """What a flag defaults to under each recipe: one value when they agree, else each recipe's."""
    from ..training.recipes import RECIPES

    def shown(v) -> str:
        if v is None:
            return "from the data" if name in ("epochs", "warmup_epochs", "flip") else "none"
        return " ".join(map(str, v)) if isinstance(v, tuple) else str(v)

    values = {r: RECIPES[r].get(name, default) for r in sorted(RECIPES)}
    if len({shown(v) for v in values.values()}) == 1:
        return f"default {shown(default)}"
    return "default by --recipe: " + ", ".join(f"{r} {shown(v)}" for r, v in values.items())


def run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from ..training.config import TrainConfig
    from ..training.loop import train
    from ..training.recipes import resolve

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if f.name not in ("recipe", "model_args")}
    if args.model_arg:
        pairs = [kv.split("=", 1) for kv in args.model_arg]
        if any(len(kv) != 2 for kv in pairs):
            raise ValueError("--model-arg takes KEY=VALUE")
        flags["model_args"] = {k.replace("-", "_"): _parse_value(v) for k, v in pairs}
    if args.print_config:
        if args.resume:
            raise ValueError("--print-config shows a new run's options; a resumed run's are in its config.json")
        print(json.dumps(resolve(args.recipe, args.config, **flags).to_dict(), indent=2))
        return 0
    if args.processes is not None and args.processes > 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args)
    if args.resume:
        overrides = {k: v for k, v in flags.items() if v is not None}
        overrides.update({k: True for k in ("recipe", "config") if getattr(args, k)})  # refused by train()
        summary = train(resume=args.resume, resume_overrides=overrides)
    else:
        summary = train(resolve(args.recipe, args.config, **flags))
    if summary.get("stopped"):
        if summary["resume_command"] and not os.environ.get(LAUNCHED):  # else the launcher says it, once
            print(f"stopped; resume with: {summary['resume_command']}")
        return 130
    if summary:
        print(json.dumps(summary, indent=2))
    return 0


def _launch(args: argparse.Namespace) -> int:
    """`--processes N`: the same command in N worker processes; one line at the end when they stopped."""
    from pathlib import Path

    from ..errors import ConfigError
    from ..training.checkpoint import resume_command
    from ..training.launch import STOPPED, launch

    out = args.resume or args.out
    if out is None:
        raise ConfigError("--processes: give the run's folder, --out FOLDER (every process writes to it)")
    argv, skip = [], False
    for a in args._argv:  # the workers run without --processes: they are the N
        if skip or a == "--processes" or a.startswith("--processes="):
            skip = a == "--processes"
            continue
        argv.append(a)
    code = launch(args.processes, argv)
    if code == STOPPED:
        print(f"stopped; resume with: {resume_command(Path(out), args.processes, launched=True)}")
    return code
