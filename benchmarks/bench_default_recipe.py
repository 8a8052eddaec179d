"""`mixerlab train --data X` with no other flag, against other recipes, on real image folders.

Makes the folders once (under runs/realdata/), from real images on this machine or in a package:
- fmnist5k: 5,000 Fashion-MNIST training images (500 per class) as PNG files in class folders, and
  1,000 test images (100 per class) as val/: the "folder of about 5,000 small images" case;
- digits: scikit-learn's 1,797 real handwritten digits (8x8, `pip install scikit-learn`), 80/20 split:
  a set where a mirror image is another class (or none);
- fashion-mnist: the built-in full set (60,000 / 10,000).
Then trains each (dataset, recipe) in a fresh process and prints a table: test top-1 at the end, the
best epoch's, and the training time. Results go to runs/realdata/results.json.

    .venv/bin/python benchmarks/bench_default_recipe.py [--only fmnist5k] [--runs default,best]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path("runs/realdata")

# (name, extra flags): the default has none; the others are what we tried against it.
RECIPES = {
    "default": [],
    "default+flip": ["--flip"],
    "demo": ["--recipe", "demo", "--no-flip"],
    "demo-30ep-crop3-ra": ["--recipe", "demo", "--no-flip", "--epochs", "30", "--crop-pad", "3", "--randaug-n", "2"],
    "scratch": ["--recipe", "scratch"],
}


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    for i, (a, y) in enumerate(zip(images, labels)):
        d = root / classes[y]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(d / f"{i:05d}.png")


def make_fmnist5k() -> Path:
    from mixerlab.data.datasets import FASHION_CLASSES
    from mixerlab.data.sources import load_dataset

    out = ROOT / "fmnist5k"
    if out.is_dir():
        return out
    ds = load_dataset("fashion-mnist", val_split=0)  # all 60,000 training images, as before the hold-out
    for split, n, name in ((ds.train, 500, "train"), (ds.test, 100, "val")):
        y = split.labels.numpy()
        idx = np.concatenate([np.flatnonzero(y == c)[:n] for c in range(10)])
        write_folder(out / name, split.images[idx, 0].numpy(), y[idx], [c.replace("/", "-") for c in FASHION_CLASSES])
    return out


def make_digits() -> Path:
    from sklearn.datasets import load_digits

    out = ROOT / "digits"
    if out.is_dir():
        return out
    d = load_digits()
    images = np.rint(d.images / 16.0 * 255).astype(np.uint8)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    n_val = len(images) // 5
    names = [str(c) for c in range(10)]
    write_folder(out / "val", images[order[:n_val]], d.target[order[:n_val]], names)
    write_folder(out / "train", images[order[n_val:]], d.target[order[n_val:]], names)
    return out


def run(data: str, name: str, flags: list[str]) -> dict:
    out = ROOT / "results" / Path(data).name / name
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text()) | json.loads((out / "wall.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "mixerlab", "train", "--data", data, "--out", str(out), "--quiet", *flags]
    subprocess.run(cmd, check=True)
    wall = {"wall_s": time.perf_counter() - t, "flags": flags}
    (out / "wall.json").write_text(json.dumps(wall))
    return json.loads((out / "summary.json").read_text()) | wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", default=["fmnist5k", "digits", "fashion-mnist"])
    p.add_argument("--runs", default=",".join(RECIPES))
    args = p.parse_args()
    datasets = {"fmnist5k": lambda: str(make_fmnist5k()), "digits": lambda: str(make_digits()),
                "fashion-mnist": lambda: "fashion-mnist"}
    results = json.loads((ROOT / "results.json").read_text()) if (ROOT / "results.json").is_file() else {}
    for key in args.only:
        data = datasets[key]()
        for name in args.runs.split(","):
            r = run(data, name, RECIPES[name])
            results[f"{key}/{name}"] = r
            print(f"{key:<14} {name:<20} final {100 * r['final_val_top1']:6.2f}%  best {100 * r['val_top1']:6.2f}% "
                  f"(epoch {r['best_epoch']}/{r['epochs']})  training {r['train_time_s']:6.0f} s", flush=True)
            (ROOT / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
