"""`mixerlab data pack`: an image folder as WebDataset shards, for training that streams."""

from __future__ import annotations

import argparse

from .common import positive_int


def add_data(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    pack = sub.add_parser("pack", help="write train-NNNNNN.tar and val-NNNNNN.tar shards and dataset.json",
                          description="Write an ImageFolder tree (train/ and val/ folders, or one folder split "
                                      "by --val-split) as WebDataset shards: each image file's own bytes and its "
                                      "class index, with dataset.json (classes, size, sample counts) beside them.")
    pack.add_argument("src", help="the image folder")
    pack.add_argument("out", help="folder for the shards")
    pack.add_argument("--shard-size", type=positive_int, default=10_000, help="images per shard (default 10000)")
    pack.add_argument("--val-split", type=float, default=0.1, help="share held out when SRC has no val/ folder")
    pack.add_argument("--img-size", type=positive_int, help="the size to train at (default: the most common "
                                                            "size, at most 224)")
    pack.add_argument("--seed", type=int, default=0)


def run_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data.shards import pack_folder

    size = (args.img_size, args.img_size) if args.img_size else None
    index = pack_folder(Path(args.src), Path(args.out), args.shard_size, args.val_split, args.seed, size)
    for name, split in index["splits"].items():
        print(f"{name}: {sum(split['counts'].values()):,} images in {len(split['counts'])} shard(s): "
              f"{Path(args.out) / split['pattern']}")
    print(f"wrote {Path(args.out) / 'dataset.json'}; train with: mixerlab train --data "
          f"'{Path(args.out) / index['splits']['train']['pattern']}'")
    return 0
