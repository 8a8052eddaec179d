"""Time to accuracy on Fashion-MNIST: test top-1 against seconds of training, for a mixerlab recipe and,
as the peer in the same run, timm's MlpMixer of the same shape under a plain loop (AdamW, cosine with
warmup, label smoothing 0.1, flips, the same images in memory, bf16 autocast where the CPU computes
bf16, else fp32, as mixerlab picks).

    .venv/bin/python benchmarks/bench_time_to_accuracy.py --recipe demo --epochs 2 --seeds 3 \
        --out docs/time_to_accuracy

Both train on all 60,000 training images (no selection, as airbench does) and are scored on the
10,000 test images `--evals-per-epoch` times an epoch; evaluation time is not counted. Prints the
time to each of 91..95% and the final accuracy (mean and spread over seeds; mixerlab's also with flip
test-time augmentation, whose evaluation seconds are recorded), and writes
`time_to_accuracy.json` and `time_to_accuracy.png` (accuracy against seconds, log-x).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mixerlab.cli.train import _parse_value as parse_value  # noqa: E402
from mixerlab.evaluate import evaluate  # noqa: E402
from mixerlab.perf.timing import machine_info  # noqa: E402
from mixerlab.training import distributed as dist_utils  # noqa: E402
from mixerlab.training.auto import total_steps  # noqa: E402
from mixerlab.training.loop import Run  # noqa: E402
from mixerlab.training.recipes import resolve  # noqa: E402
from mixerlab.training.step import step_seed, train_step  # noqa: E402

TARGETS = (0.91, 0.92, 0.93, 0.94, 0.95)


def run_ours(recipe: str, seed: int, epochs: int | None, evals: int, max_steps: int | None,
             overrides: dict | None = None):
    """[(training seconds, test top-1)] of one mixerlab run, scored `evals` times an epoch; the model
    config, precision and training config it ran with; and (test top-1 with flip TTA, its seconds)."""
    flags = dict(data="fashion-mnist", val_split=0.0, seed=seed, quiet=True, max_steps_per_epoch=max_steps,
                 **(overrides or {}))
    if epochs:
        flags["epochs"] = epochs
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve(recipe, out=tmp, **flags)
        run = Run(cfg, Path(tmp), dist_utils.setup(cfg.device))
        curve, seconds = [], run.setup_seconds  # the whitened stem, where the recipe has one
        every = max(1, run.steps_per_epoch // evals)
        for epoch in range(run.cfg.epochs):
            run.ddp.train()
            feed = run.feed.steps(epoch, 0)
            for step in range(run.steps_in(epoch)):
                t = time.perf_counter()
                torch.manual_seed(step_seed(cfg.seed, epoch, step, 0))
                batches, _ = next(feed)
                train_step(run.ddp, batches, run.optimizer, run.cfg, run.data.num_classes, run.device,
                           run.precision, run.scaler)
                run.scheduler.step()
                if run.ema is not None:
                    run.ema.update_parameters(run.model)
                seconds += time.perf_counter() - t
                if (step + 1) % every == 0 or step + 1 == run.steps_in(epoch):
                    ev = evaluate(run.eval_model, run.data.test, 10, run.device, 1024, run.precision)
                    curve.append((seconds, ev["top1"]))
                    run.ddp.train()
            feed.close()
        # flip test-time augmentation, once at the end: its time is evaluation time, reported beside it
        t = time.perf_counter()
        tta = evaluate(run.eval_model, run.data.test, 10, run.device, 1024, run.precision, tta=True)["top1"]
        return curve, run.model.config, run.precision, run.cfg, (tta, time.perf_counter() - t)


def run_peer(model_cfg, train_cfg, precision: str, seed: int, evals: int, max_steps: int | None):
    """timm's MlpMixer of the same shape, trained by a plain loop on the same images."""
    import timm
    from timm.models.mlp_mixer import MlpMixer

    from mixerlab.data.sources import load_dataset

    torch.manual_seed(seed)
    c = model_cfg
    model = MlpMixer(num_classes=10, img_size=c.img_size[0], in_chans=c.in_chans, patch_size=c.patch_size,
                     num_blocks=c.depth, embed_dim=c.embed_dim,
                     mlp_ratio=(c.tokens_mlp_dim / c.embed_dim, c.channels_mlp_dim / c.embed_dim))
    del timm
    data = load_dataset("fashion-mnist", val_split=0)
    x_all, y_all = data.train.images, data.train.labels
    mean, std = torch.tensor(c.mean).view(1, -1, 1, 1), torch.tensor(c.std).view(1, -1, 1, 1)
    bs, epochs = train_cfg.batch_size, train_cfg.epochs
    steps = len(y_all) // bs if max_steps is None else min(max_steps, len(y_all) // bs)
    # the same number of steps as ours: a time budget's run ends inside its last epoch
    total = total_steps(epochs, train_cfg.max_steps, steps)
    warm = max(1, int(steps * (train_cfg.warmup_epochs or 0.5)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    def lr_at(s: int) -> float:
        return (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    dtype = torch.bfloat16 if precision == "bf16" else None
    every = max(1, steps // evals)
    curve, seconds = [], 0.0

    def score() -> float:
        model.eval()
        hits = 0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            for xb, yb in zip(data.test.images.split(1024), data.test.labels.split(1024)):
                hits += int((model((xb.float() / 255 - mean) / std).argmax(1) == yb).sum())
        model.train()
        return hits / len(data.test.labels)

    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(y_all), generator=g)
        last = min(steps, total - epoch * steps)
        for step in range(last):
            t = time.perf_counter()
            idx = order[step * bs:(step + 1) * bs]
            xb = (x_all[idx].float() / 255 - mean) / std
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb[flip] = xb[flip].flip(-1)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(model(xb).float(), y_all[idx], label_smoothing=0.1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            seconds += time.perf_counter() - t
            if (step + 1) % every == 0 or step + 1 == last:
                curve.append((seconds, score()))
    return curve


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((s for s, a in curve if a >= target), None)


def summarise(curves: list[list[tuple[float, float]]]) -> dict:
    finals = [c[-1][1] for c in curves]
    out = {"final_top1_mean": statistics.fmean(finals), "final_top1_std": statistics.pstdev(finals),
           "train_seconds_mean": statistics.fmean(c[-1][0] for c in curves), "time_to": {}}
    for t in TARGETS:
        hits = [time_to(c, t) for c in curves]
        out["time_to"][f"{100 * t:.0f}"] = {"seconds": hits, "reached": sum(h is not None for h in hits)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--epochs", type=int, default=None,
                    help="default: the recipe's length (the speedrun's: the steps that fit its 60 s)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--evals-per-epoch", type=int, default=4)
    ap.add_argument("--max-steps-per-epoch", type=int, default=None,
                    help="for a smoke run, with --epochs (a time budget would fill its seconds with epochs this short)")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a training option over the recipe's, as in a config file: --set flip=true")
    ap.add_argument("--out", default="docs/time_to_accuracy")
    args = ap.parse_args()
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: give KEY=VALUE")
        overrides[key.replace("-", "_")] = parse_value(value)  # JSON or a string, as --model-arg reads it
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"machine": machine_info(), "recipe": args.recipe, "overrides": overrides, "lines": {}}
    ours, peer, ttas = [], [], []
    for seed in range(args.seeds):
        curve, mcfg, precision, tcfg, tta = run_ours(args.recipe, seed, args.epochs, args.evals_per_epoch,
                                                     args.max_steps_per_epoch, overrides)
        ours.append(curve)
        ttas.append(tta)
        print(f"mixerlab {args.recipe} seed {seed}: {curve[-1][1]:.2%} after {curve[-1][0]:.0f} s "
              f"({tta[0]:.2%} with flip TTA, {tta[1]:.1f} s to evaluate)", flush=True)
        if not args.no_peer:
            peer.append(run_peer(mcfg, tcfg, precision, seed, args.evals_per_epoch, args.max_steps_per_epoch))
            print(f"timm MlpMixer, plain loop, seed {seed}: {peer[-1][-1][1]:.2%} after {peer[-1][-1][0]:.0f} s",
                  flush=True)
    label = f"mixerlab --recipe {args.recipe}" + (f" --epochs {args.epochs}" if args.epochs else "")
    for k, v in overrides.items():  # as the command line would say it
        flag = "--" + k.replace("_", "-")
        label += f" {flag}" if v is True else f" --no-{k.replace('_', '-')}" if v is False else f" {flag} {v}"
    res["lines"][label] = {"curves": ours, **summarise(ours), "final_tta_top1": [a for a, _ in ttas],
                           "final_tta_top1_mean": statistics.fmean(a for a, _ in ttas),
                           "final_tta_top1_std": statistics.pstdev(a for a, _ in ttas),
                           "tta_eval_seconds": [s for _, s in ttas]}
    if peer:
        res["lines"]["timm MlpMixer, AdamW, plain loop"] = {"curves": peer, **summarise(peer)}
    res["precision"], res["model"] = precision, mcfg.to_dict()
    (out / "time_to_accuracy.json").write_text(json.dumps(res, indent=2))
    for name, line in res["lines"].items():
        times = ", ".join(f"{k}%: " + ("/".join("-" if s is None else f"{s:.0f}s" for s in v["seconds"]))
                          for k, v in line["time_to"].items())
        tta = (f" ({100 * line['final_tta_top1_mean']:.2f}% +- {100 * line['final_tta_top1_std']:.2f} with flip TTA)"
               if "final_tta_top1_mean" in line else "")
        print(f"{name}: final {100 * line['final_top1_mean']:.2f}% +- {100 * line['final_top1_std']:.2f}{tta} "
              f"in {line['train_seconds_mean']:.0f} s; time to {times}")
    plot(res, out / "time_to_accuracy.png")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, line) in enumerate(res["lines"].items()):
        for j, curve in enumerate(line["curves"]):
            ax.plot([s for s, _ in curve], [100 * a for _, a in curve], color=f"C{i}", alpha=0.8,
                    label=name if j == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("seconds of training (evaluation excluded)")
    ax.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax.set_ylim(70, 96)
    for t in TARGETS:
        ax.axhline(100 * t, color="grey", lw=0.5, ls=":")
    m = res["machine"]
    ax.set_title(f"time to accuracy, {m['cpu']} (family {m['cpu_family']}, model {m['cpu_model']}), "
                 f"{m['threads']} threads", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
