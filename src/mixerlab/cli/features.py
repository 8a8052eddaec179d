"""`mixerlab fewshot`: the paper's few-shot linear evaluation (and DINO's kNN) of a model's features."""

from __future__ import annotations

import argparse
import json

from .common import add_preprocess, add_trust_compiled, load_for_inference, positive_int


def add_fewshot(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a run folder, checkpoint, official .npz or anything from_pretrained reads; its head "
                               "is not used (a model without one works)")
    p.add_argument("--data", default="fashion-mnist", help="dataset name, ImageFolder path or WebDataset shards")
    p.add_argument("--data-dir")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 25], help="images per class (default 1 5 10 25)")
    p.add_argument("--seeds", type=int, default=3, help="subsets drawn per shot count (default 3)")
    p.add_argument("--l2", type=float, default=1024.0, help="ridge penalty, big_vision's l2_reg (default 1024)")
    p.add_argument("--knn", action="store_true", help="also DINO's weighted kNN on all the training features")
    p.add_argument("--k", type=int, nargs="+", default=[10, 20, 100, 200], help="neighbours for --knn")
    p.add_argument("--probe", action="store_true",
                   help="also a linear probe (logistic regression by L-BFGS on all the training features, its L2 "
                        "penalty chosen on a fifth of them)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_preprocess(p)
    add_trust_compiled(p)


def run_fewshot(args: argparse.Namespace) -> int:
    import logging

    from ..data.sources import load_dataset
    from ..errors import DataError
    from ..features.extract import extract_features
    from ..features.fewshot import fewshot
    from ..features.knn import knn
    from ..perf.runtime import pick_device

    model = load_for_inference(args.src, args)
    if not hasattr(model, "forward_features"):
        raise DataError(f"{args.src}: an exported file gives logits only; few-shot needs the model's features "
                        "(give the run folder or checkpoint)")
    # a built-in set's training images are all candidates for the k-shot subsets (its test images are
    # the test); a single folder holds out 10% as the test, as training would
    builtin = args.data in ("fashion-mnist", "mnist", "cifar10", "cifar100")
    data = load_dataset(args.data, args.data_dir, img_size=tuple(model.config.img_size),
                        val_split=0 if builtin else 0.1)
    test_name, test = ("test", data.test) if getattr(data, "test", None) is not None else ("val", data.val)
    if test is None or len(test) == 0 or len(data.train) == 0:
        raise DataError(f"{args.data}: few-shot needs training images and test (or val) images")
    device = pick_device(args.device)
    xtr, ytr = extract_features(model, data.train, device, args.batch_size, progress=True, desc="train features")
    xte, yte = extract_features(model, test, device, args.batch_size, progress=True, desc=f"{test_name} features")
    logging.getLogger("mixerlab").info("features: %d training and %d %s images, %d dimensions", len(ytr), len(yte),
                                       test_name, xtr.shape[1])
    res = fewshot(xtr, ytr, xte, yte, shots=args.shots, seeds=args.seeds, l2_reg=args.l2,
                  num_classes=data.num_classes)
    res.update(source=str(args.src), data=args.data, test_split=test_name)
    if args.knn:
        res["knn"] = knn(xtr, ytr, xte, yte, ks=args.k, num_classes=data.num_classes)
    if args.probe:
        from ..features.probe import linear_probe

        res["probe"] = linear_probe(xtr, ytr, xte, yte, num_classes=data.num_classes)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"few-shot linear (big_vision's fewshot_lsr, l2 {args.l2:g}) on {args.data}, {test_name} images: "
          f"{len(yte):,}")
    print(f"{'shots':>6} " + " ".join(f"seed {s:<3}" for s in range(args.seeds)) + "   mean +- std")
    for k, e in res["shots"].items():
        print(f"{k:>6} " + " ".join(f"{100 * a:7.2f}%" for a in e["accuracy"])
              + f"   {100 * e['mean']:.2f}% +- {100 * e['std']:.2f}")
    if args.knn:
        print(f"weighted kNN (DINO, T 0.07) over {len(ytr):,} training images:")
        for k, e in res["knn"]["k"].items():
            print(f"  k {k:>4}: top-1 {100 * e['top1']:.2f}%  top-5 {100 * e['top5']:.2f}%")
    if args.probe:
        print(f"linear probe (L-BFGS, l2 {res['probe']['l2']:g} chosen on a fifth of the training features): "
              f"top-1 {100 * res['probe']['top1']:.2f}%")
    return 0


def add_embed(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a run folder, checkpoint, official .npz or anything from_pretrained reads")
    p.add_argument("--data", default="fashion-mnist", help="dataset name, ImageFolder path or WebDataset shards")
    p.add_argument("--data-dir")
    p.add_argument("--out", required=True, help="folder for features.safetensors and index.jsonl (a killed run "
                                                "continues there)")
    p.add_argument("--splits", nargs="+", choices=["train", "val", "test"], default=None,
                   help="default: every split the data has")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--workers", type=int, default=None, help="decoding processes (folders are streamed)")
    p.add_argument("--device", default="auto")
    add_preprocess(p)


def run_embed(args: argparse.Namespace) -> int:
    from ..data.sources import load_dataset
    from ..errors import DataError
    from ..features.embed import embed
    from ..perf.runtime import pick_device

    model = load_for_inference(args.src, args)
    if not hasattr(model, "forward_features"):
        raise DataError(f"{args.src}: an exported file gives logits only; embed needs the model itself")
    # folders are streamed: memory stays flat on any size, and each row keeps its file's path
    stream = None if args.data in ("fashion-mnist", "mnist", "cifar10", "cifar100") else True
    data = load_dataset(args.data, args.data_dir, img_size=tuple(model.config.img_size), val_split=0,
                        stream=stream, workers=args.workers)
    res = embed(model, data, args.out, tuple(args.splits) if args.splits else None, args.batch_size,
                pick_device(args.device, keep_freed=False), args.dtype)
    print(f"wrote {res['rows']:,} rows of {res['dim']} features ({', '.join(res['splits'])}) to {res['file']} "
          f"and {args.out}/index.jsonl")
    return 0
