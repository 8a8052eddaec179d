"""The streaming data path, measured: decode rate per worker, the data share of a 224 px training
step with 0, 1 and 2 workers, and peak memory against dataset size (streamed and in memory).

    .venv/bin/python benchmarks/bench_stream.py [--sizes 2000 20000] [--out runs/bench-stream]

Generated JPEGs (smooth colour fields with noise, 240-320 px a side, quality 90, about the bytes of a
photo of that size) in train/<class>/ folders with a 200-image val/. Each training run is a separate
process whose whole process tree (workers included) is sampled for resident memory every 0.1 s.
Prints a table and writes results.json; docs/benchmarks.md keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from mixerlab.data.stream import FolderSamples, train_transform
from mixerlab.perf.timing import machine_info

CLASSES = 10


def make_folder(root: Path, n_train: int, n_val: int = 200) -> Path:
    if (root / "done").is_file():
        return root
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            c = i % CLASSES
            h, w = rng.integers(240, 321, 2)
            yy, xx = np.mgrid[0:h, 0:w]
            base = (np.stack([xx * (c + 1), yy * (10 - c), xx + yy], -1) % 256).astype(np.int16)
            a = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            d = root / part / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(d / f"{i:06d}.jpg", quality=90)
    (root / "done").write_text("")
    return root


def make_flat_folder(root: Path, n: int, side: int = 128) -> Path:
    """One folder of n JPEGs of one size (no val/: the trainer holds out --val-split of them)."""
    if (root / "done").is_file():
        return root
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    for i in range(n):
        c = i % CLASSES
        a = np.clip(((xx + yy)[..., None] * (c + 1)) % 256 + rng.integers(-40, 40, (side, side, 3)), 0, 255)
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a.astype(np.uint8)).save(d / f"{i:06d}.jpg", quality=90)
    (root / "done").write_text("")
    return root


def flat_memory(out: Path, sizes: list[int], eval_batch: int) -> dict:
    """Peak PSS of `mixerlab train --stream --val-split 0.1` (mixer_nano, P=16, 128 px, 20 steps) against
    the folder's size. The validation split grows with the folder, so `eval_batch` is set small enough
    that even the smallest folder's split fills whole batches: what is compared is then the dataset's
    own footprint, not a batch that is smaller only because the split is."""
    res = {}
    for n in sizes:
        folder = make_flat_folder(out / f"flat{n}", n)
        run = out / f"flat-run{n}"
        subprocess.run(["rm", "-rf", str(run)], check=True)
        cmd = [sys.executable, "-m", "mixerlab", "train", "--data", str(folder), "--out", str(run), "--stream",
               "--val-split", "0.1", "--img-size", "128", "--model", "mixer_nano", "--model-arg", "patch_size=16",
               "--epochs", "1", "--max-steps-per-epoch", "20", "--eval-batch-size", str(eval_batch), "--quiet"]
        res[n], _ = peak_rss_of(cmd)
        print(f"{n:>6} images of 128 px, --val-split 0.1, streamed: peak memory (PSS) {res[n]:,.0f} MB")
    return res


def embed_memory(out: Path, sizes: list[int]) -> dict:
    """Peak PSS of `mixerlab embed` (mixer_nano, P=16, 128 px, one decoding worker) against the folder's
    size: the features go to disk batch by batch, so it should not grow with the folder."""
    import mixerlab

    model_dir = out / "embed-model"
    mixerlab.create_model("mixer_nano", img_size=128, in_chans=3, patch_size=16).save_pretrained(model_dir)
    res = {}
    for n in sizes:
        folder = make_flat_folder(out / f"flat{n}", n)
        dest = out / f"embed{n}"
        subprocess.run(["rm", "-rf", str(dest)], check=True)
        cmd = [sys.executable, "-m", "mixerlab", "embed", str(model_dir), "--data", str(folder), "--out", str(dest),
               "--workers", "1", "--batch-size", "128"]
        res[n], _ = peak_rss_of(cmd)
        print(f"{n:>6} images of 128 px, mixerlab embed: peak memory (PSS) {res[n]:,.0f} MB")
    return res


def decode_rate(root: Path, n: int = 400) -> float:
    """Images/s one process decodes and augments (the work of one worker) at 224 px."""
    items = [(p, 0) for p in sorted((root / "train").rglob("*.jpg"))[:n]]
    data = FolderSamples(items, 3, train_transform((224, 224), True, 2, 9, 0.08, "bicubic"))
    t = time.perf_counter()
    for i in range(len(data)):
        data[(i, i)]
    return len(data) / (time.perf_counter() - t)


def peak_rss_of(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Run `cmd`; the peak of the summed proportional set size (PSS) of it and its children, in MB: the
    resident memory with pages that forked workers share with their parent counted once."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        p = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [p] + p.children(recursive=True)
                peak = max(peak, sum(q.memory_full_info().pss for q in tree))
            except psutil.Error:
                pass
            time.sleep(0.1)

    th = threading.Thread(target=sample)
    th.start()
    out, err = proc.communicate()
    done.set()
    th.join()
    if proc.returncode:
        raise RuntimeError(err[-3000:])
    return peak / 2**20, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def train_cmd(data: Path, out: Path, stream: bool, workers: int, steps: int) -> list[str]:
    return [sys.executable, "-m", "mixerlab", "train", "--data", str(data), "--out", str(out), "--model",
            "mixer_s16_224", "--img-size", "224", "--batch-size", "32", "--epochs", "1", "--max-steps-per-epoch",
            str(steps), "--eval-batch-size", "100", "--quiet", "--workers", str(workers),
            "--stream" if stream else "--no-stream"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default="runs/bench-stream")
    ap.add_argument("--skip-share", action="store_true", help="only the memory measurement")
    ap.add_argument("--flat", type=int, nargs="*", metavar="N",
                    help="only the flat-memory check on one folder of N 128 px images each (default 2000 20000)")
    ap.add_argument("--eval-batch", type=int, default=100, help="with --flat: the evaluation batch")
    ap.add_argument("--embed", type=int, nargs="*", metavar="N",
                    help="only the flat-memory check of mixerlab embed on folders of N images "
                         "(default 2000 5000 20000)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.embed is not None:
        sizes = args.embed or [2000, 5000, 20000]
        res = {"machine": machine_info(), "peak_pss_mb": embed_memory(out, sizes)}
        peak = res["peak_pss_mb"]
        print(f"ratio of the largest to the smallest: {peak[sizes[-1]] / peak[sizes[0]]:.2f}")
        out.mkdir(parents=True, exist_ok=True)
        (out / "embed.json").write_text(json.dumps(res, indent=2))
        return
    if args.flat is not None:
        sizes = args.flat or [2000, 20000]
        res = {"machine": machine_info(), "eval_batch": args.eval_batch,
               "peak_pss_mb": flat_memory(out, sizes, args.eval_batch)}
        lo, hi = min(sizes), max(sizes)
        print(f"{hi:,} against {lo:,} images: x{res['peak_pss_mb'][hi] / res['peak_pss_mb'][lo]:.2f}")
        (out / "flat.json").write_text(json.dumps(res, indent=2))
        return
    folders = {n: make_folder(out / f"jpeg{n}", n) for n in args.sizes}
    small = folders[min(args.sizes)]
    res: dict = {"machine": machine_info(), "decode_img_s_per_worker": decode_rate(small)}
    print(f"decode + augment at 224 px: {res['decode_img_s_per_worker']:.0f} img/s per worker")
    res["data_share"] = {}
    for w in () if args.skip_share else (0, 1, 2):
        run = out / f"share-w{w}"
        subprocess.run(["rm", "-rf", str(run)], check=True)
        peak_rss_of(train_cmd(small, run, True, w, args.steps))
        m = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        res["data_share"][w] = {"data_time_share": m["data_time_share"], "images_per_s": m["images_per_s"]}
        print(f"mixer_s16_224 training, {w} worker(s): data {100 * m['data_time_share']:.1f}% of the step, "
              f"{m['images_per_s']:.1f} img/s")
    res["peak_rss_mb"] = {}
    for n, folder in folders.items():
        for stream in (True, False):
            run = out / f"rss-{n}-{'stream' if stream else 'memory'}"
            subprocess.run(["rm", "-rf", str(run)], check=True)
            mb, _ = peak_rss_of(train_cmd(folder, run, stream, 2 if stream else 0, 2))
            res["peak_rss_mb"][f"{n} {'streamed' if stream else 'in memory'}"] = mb
            how = "streamed (2 workers)" if stream else "in memory"
            print(f"{n:>6} images {how:>20}: peak memory (PSS) {mb:,.0f} MB")
    (out / "results.json").write_text(json.dumps(res, indent=2))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
