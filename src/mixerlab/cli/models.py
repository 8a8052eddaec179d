"""`mixerlab info`, `mixerlab convert` and `mixerlab push`: models, checkpoints, their formats and the Hub."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import MixerlabError


# ------------------------------------------------------------------------------------------ info
def add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="a model name or checkpoint path; all models when omitted")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run_info(args: argparse.Namespace) -> int:
    from ..models.flops import count_macs, count_params
    from ..models.registry import create_model as create_random_model
    from ..models.registry import list_models
    from ..weights.load import from_pretrained

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
    if args.name in list_models():
        import torch

        with torch.device("meta"):  # a registered name's description needs shapes, not weights
            model = create_random_model(args.name)
    else:
        model = from_pretrained(args.name)
    info = describe(args.name, model)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{info['name']}: {info['arch']}, {info['params']:,} parameters, {info['gmacs']} GMACs/image")
        for k, v in info["config"].items():
            print(f"  {k:<18} {v}")
    return 0


# --------------------------------------------------------------------------------------- convert
def add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="any checkpoint from_pretrained reads (npz, timm .pth/.safetensors, folder)")
    p.add_argument("dst", help="output: a folder (mixerlab), a .pth/.safetensors file (timm) or a .npz")
    from .common import add_old_name, add_overwrite

    formats = ["mixerlab", "timm", "official", "hub"]
    p.add_argument("--format", dest="to", choices=formats, default=None,
                   help="what to write (required): mixerlab (a folder), timm (.pth/.safetensors), official (.npz), "
                        "hub (a folder in timm's Hugging Face layout with a model card: timm, transformers and "
                        "the Hub read it without mixerlab)")
    add_old_name(p, "--to", "--format", "to", choices=formats)
    p.add_argument("--img-size", type=int, nargs="+", help="also resize the token mixing to this size")
    add_hub_options(p)
    add_overwrite(p)


def add_hub_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--license", default="other", help="with --format hub: the card's license (a Hub license id "
                                                      "such as apache-2.0, mit; default: other)")
    p.add_argument("--repo-id", help="with --format hub: ORG/NAME the card's usage lines name (default: the folder)")


def run_convert(args: argparse.Namespace) -> int:
    from ..models.serialization import save_pretrained
    from ..weights.load import from_pretrained
    from ..weights.official import save_official
    from ..weights.timm import save_timm
    from .common import refuse_existing

    if args.to is None:
        raise MixerlabError("convert needs --format mixerlab, timm, official or hub (what to write DST as)")
    if args.to == "hub":
        from ..weights.hub import check_out_dir

        check_out_dir(Path(args.dst), args.overwrite)
    else:
        refuse_existing([args.dst], args.overwrite)
    size = tuple(args.img_size) if args.img_size else None
    model = from_pretrained(args.src, img_size=size[0] if size and len(size) == 1 else size)
    if args.to == "hub":
        return write_hub(model, args.src, args.dst, args.repo_id, args.license, args.overwrite)
    if args.to == "mixerlab":
        save_pretrained(model, args.dst)
    elif args.to == "timm":
        save_timm(model, args.dst)
    else:
        if model.config.arch != "mixer":
            raise MixerlabError("only MLP-Mixer models have an official npz layout")
        save_official(model, args.dst)
    print(f"wrote {args.dst} ({args.to})")
    for line in what_changed(model, from_pretrained(args.dst)):
        print(line)
    return 0


def write_hub(model, src: str, dst: str, repo_id: str | None, license: str, overwrite: bool) -> int:
    from ..weights.hub import save_hub
    from ..weights.load import from_pretrained

    res = save_hub(model, dst, source=src, repo_id=repo_id, license=license, overwrite=overwrite)
    print(f"wrote {dst} ({', '.join(res['files'])}) for timm's {res['architecture']}")
    note = res["activation"]
    if note:
        print(f"note: this model uses the tanh GELU and timm's MlpMixer builds the exact one: in timm and transformers "
              f"its logits differ by up to {note['max_abs_logit_diff']:.3g} and the top class agrees on "
              f"{100 * note['top1_agreement']:.1f}% of {note['batch']} (the card says so too)")
    for line in what_changed(model, from_pretrained(dst)):
        print(line)
    return 0


# ------------------------------------------------------------------------------------------ push
def add_push(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a Hub folder (convert --format hub), or any model from_pretrained reads (it is "
                               "converted first)")
    p.add_argument("repo_id", help="ORG/NAME on the Hugging Face Hub (created if missing)")
    p.add_argument("--dry-run", action="store_true", help="write the folder and list what would be uploaded; "
                                                          "send nothing")
    p.add_argument("--out", help="where to write the folder when SRC is not one (default: a temporary folder)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--token", help="a Hugging Face token (default: HF_TOKEN or huggingface-cli login's)")
    add_hub_options(p)


def run_push(args: argparse.Namespace) -> int:
    import tempfile

    from ..weights.hub import push, save_hub
    from ..weights.load import detect_format, from_pretrained

    src = Path(args.src)
    with tempfile.TemporaryDirectory(prefix="mixerlab-push-") as tmp:
        # a timm repo folder with its card goes as it is; anything else is converted (and gets a card)
        if src.is_dir() and (src / "README.md").is_file() and detect_format(src) == "timm-dir":
            folder = src
        else:
            folder = Path(args.out or Path(tmp) / "repo")
            save_hub(from_pretrained(args.src), folder, source=args.src, repo_id=args.repo_id,
                     license=args.license, overwrite=False)
        files = push(folder, args.repo_id, token=args.token, private=args.private, dry_run=args.dry_run)
        verb = "would upload" if args.dry_run else "uploaded"
        print(f"{verb} {len(files)} files from {folder} to https://huggingface.co/{args.repo_id}:")
        for f in files:
            print(f"  {f:<24} {(folder / f).stat().st_size:>12,} bytes")
    return 0


def what_changed(before, after) -> list[str]:
    """What a conversion lost or changed, found by reading the written file back: class names, the
    preprocessing, other config fields, and the logits on a fixed check batch."""
    import torch

    lines = []
    names_b, names_a = getattr(before, "class_names", None), getattr(after, "class_names", None)
    if names_b and names_b != names_a:
        lines.append(f"dropped: the class names ({len(names_b)}; the file gives only indices 0..{len(names_b) - 1})")
    a, b = before.config.to_dict(), after.config.to_dict()
    changed = [f"{k} {a[k]!r} -> {b.get(k)!r}" for k in sorted(a) if a[k] != b.get(k)]
    if changed:
        lines.append("changed: " + "; ".join(changed) + " (the format does not record them; the reader's "
                                                         "defaults stand in)")
    cfg = before.config
    x = torch.randn(2, cfg.in_chans, *cfg.img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((before.eval()(x) - after.eval()(x)).abs().max())
    lines.append(f"check: the file's logits differ from the source's by at most {diff:.2e} on a check batch"
                 + (" (the activation changed)" if a.get("act") != b.get("act") else ""))
    if not changed and not lines[:-1]:
        lines.insert(0, "nothing lost: the file reads back as the same model")
    return lines
