"""`mixerlab eval` and `mixerlab predict`, for checkpoints and exported files alike."""

from __future__ import annotations

import argparse
import json
import re
import sys

from .common import add_overwrite, add_preprocess, add_trust_compiled, load_for_inference, positive_int, refuse_existing


# ------------------------------------------------------------------------------------ eval/predict
def add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a run folder, checkpoint, or anything from_pretrained reads")
    p.add_argument("--data", default="fashion-mnist", help="dataset name, ImageFolder path or WebDataset shards")
    p.add_argument("--data-dir")
    p.add_argument("--split", choices=["test", "val", "train"], default=None,
                   help="default: test for the built-in sets (their official test images), else val")
    p.add_argument("--val-data", help="validation shards, when --data names training shards")
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="decode images as they are scored, in worker processes (default: when they would not "
                        "fit in memory)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes when streaming")
    p.add_argument("--batch-size", type=positive_int, default=512)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="folder for eval.json and confusion.png (default: beside SRC or ./eval)")
    add_preprocess(p)
    add_trust_compiled(p)
    add_overwrite(p)
    p.add_argument("--map-by-index", action="store_true",
                   help="score class i of the data as class i of the model even when their names differ")
    p.add_argument("--tta", action="store_true",
                   help="also average each image with its mirror (flip test-time augmentation); the "
                        "results go to eval_tta.json beside eval.json")


def run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data.sources import load_dataset
    from ..errors import DataError
    from ..evaluate import check_classes, evaluate
    from ..io_utils import atomic_write_json, writable_folder
    from ..perf.runtime import pick_device

    out = Path(args.out) if args.out else (Path(args.src) if Path(args.src).is_dir() else Path("eval"))
    stem = "eval_tta" if args.tta else "eval"  # a TTA result never overwrites the plain one
    refuse_existing([out / f"{stem}.json"], args.overwrite)
    model = load_for_inference(args.src, args)
    size = tuple(model.config.img_size)
    data = load_dataset(args.data, args.data_dir, img_size=size, stream=args.stream, workers=args.workers,
                        val_data=args.val_data)
    check_classes(model, data.classes, args.src, args.data, args.map_by_index)
    device = pick_device(args.device)
    model.to(device)
    args.split = args.split or ("test" if getattr(data, "test", None) is not None else "val")
    split = getattr(data, args.split, None)
    if split is None:
        raise DataError(f"{args.data} has no {args.split} split; it has "
                        f"{', '.join(n for n in ('train', 'val', 'test') if getattr(data, n, None) is not None)}")
    res = evaluate(model, split, data.num_classes, device, args.batch_size, args.precision, progress=True,
                   tta=args.tta, hardest=16)
    writable_folder(out)
    names = getattr(model, "class_names", None) or data.classes
    report = write_eval_report(model, res, res.pop("hardest_images"), names, out, stem,
                               f"{args.src} on {args.data} ({args.split})")
    res["per_class"] = dict(zip(names, res["per_class"]))
    res["precision_per_class"] = dict(zip(names, res["precision_per_class"]))
    res.update({"source": str(args.src), "data": args.data, "split": args.split})
    atomic_write_json(out / f"{stem}.json", res)
    if (out / "summary.json").is_file() and (out / "report.md").is_file():  # a run folder: its report shows it
        from ..report import write_report

        write_report(out)
    print(f"top-1 {100 * res['top1']:.2f}%  top-5 {100 * res['top5']:.2f}%  loss {res['loss']:.4f}  "
          f"({res['count']} images{', flip TTA' if args.tta else ''})")
    for c, a in res["per_class"].items():
        print(f"  {c:<20} {100 * a:6.2f}%  precision {100 * res['precision_per_class'][c]:6.2f}%")
    print(f"wrote {out / f'{stem}.json'}, {out / f'{stem}_confusion.png'} and {report}")
    return 0


def write_eval_report(model, res: dict, hardest_images, names: list[str], out, stem: str, title: str):
    """{stem}_report.md and .html: per-class precision and recall, confusion, hardest images, and the
    first block's token mixing for a PyTorch Mixer."""
    from ..report import Document, add_evaluation, plot_confusion, plot_hardest
    from ..viz.figures import token_mixing_figure

    plot_confusion(res["confusion"], names, out / f"{stem}_confusion.png")
    plot_hardest(hardest_images, res["hardest"], names, out / f"{stem}_hardest.png")
    if model.config.arch == "mixer" and hasattr(model, "blocks"):  # not an exported file
        token_mixing_figure(model, 0, out)
    doc = Document(f"Evaluation: {title}")
    doc.para(f"top-1 **{100 * res['top1']:.2f}%**, top-5 {100 * res['top5']:.2f}%, loss {res['loss']:.4f}, "
             f"{res['count']} images" + (", flip TTA" if res["tta"] else ""))
    add_evaluation(doc, res, names, out, f"{stem}_")
    return doc.write(out, f"{stem}_report")[1]


def add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a run folder, checkpoint, or anything from_pretrained reads")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--topk", type=positive_int, default=5, help="how many classes to show (at least 1)")
    add_preprocess(p)
    add_trust_compiled(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="auto")


def run_predict(args: argparse.Namespace) -> int:
    from ..perf.runtime import pick_device
    from ..predict import list_image_files, predict_files

    model = load_for_inference(args.src, args)
    files = list_image_files(args.images)
    results = predict_files(model, files, args.topk, str(pick_device(args.device)),
                            getattr(model, "class_names", None))
    bad = sum("error" in r for r in results)
    summary = f"{len(results)} file(s): {len(results) - bad} classified, {bad} unusable"
    if args.json:
        print(json.dumps(results, indent=2))
        print(summary, file=sys.stderr)
    else:
        for r in results:  # names shown with control characters escaped: a newline cannot fake a line
            if "error" in r:
                print(f"{printable(r['file'])}: {r['error']}")
                continue
            top = ", ".join(f"{printable(t['class'])} {100 * t['prob']:.1f}%" for t in r["top"])
            print(f"{printable(r['file'])}: {top}")
        if len(results) > 1:
            print(summary)
    return 1 if bad else 0


def printable(text: str) -> str:
    """`text` with control characters (newlines, escapes, carriage returns) shown as \\xNN."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", lambda m: f"\\x{ord(m.group()):02x}", text)
