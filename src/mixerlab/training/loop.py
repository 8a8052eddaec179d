"""The trainer: one process, or many under `torchrun` (DistributedDataParallel).

Everything random in a step (the batch order, augmentation, mixup, stochastic depth) is a function of
(seed, epoch, step, rank), so `--resume` continues bit for bit where an interrupted run stopped: the
checkpoint holds the model, optimiser, scheduler, EMA and position in the epoch. Only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.datasets import Dataset, load_dataset
from ..data.transforms import BatchAugment, mixup, soft_targets
from ..errors import MixerlabError
from ..evaluate import autocast, evaluate, prepare
from ..io_utils import atomic_write, atomic_write_json
from ..models.config import MixerConfig
from ..models.flops import count_params
from ..perf.allocator import tune_cpu_allocator
from . import distributed as dist_utils
from . import optim
from .recipes import TrainConfig

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "mixerlab-train-v1"


class TrainingError(MixerlabError):
    """A run that cannot go on (a NaN loss, a bad resume folder)."""


# ------------------------------------------------------------------------------------ set-up helpers
def pick_precision(precision: str, device: torch.device) -> str:
    """'auto': bf16 where the hardware computes it natively (measured 1.8x faster than fp32 for the demo
    model on an AVX512-BF16 CPU), fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


def auto_model_config(data: Dataset, overrides: dict[str, Any]) -> MixerConfig:
    """A small Mixer for small images, a paper-style S/16 for large ones; the patch divides the image."""
    from ..models.registry import get_config

    h, w = data.img_size
    base = "mixer_nano" if max(h, w) <= 64 else "mixer_s16_224"
    want = 4 if base == "mixer_nano" else 16
    patch = next((p for p in range(want, 0, -1) if h % p == 0 and w % p == 0), 1)
    args = dict(img_size=(h, w), patch_size=patch, in_chans=data.in_chans, num_classes=data.num_classes)
    args.update(overrides)
    return get_config(base, **args)  # type: ignore[return-value]


def build_model(cfg: TrainConfig, data: Dataset) -> nn.Module:
    from ..models.registry import get_config, model_from_config
    from ..weights.hub import from_pretrained

    overrides = dict(cfg.model_args)
    if cfg.drop_path:
        overrides["drop_path_rate"] = cfg.drop_path
    if cfg.dropout:
        overrides["drop_rate"] = cfg.dropout
    if cfg.pretrained:
        size = cfg.img_size or None
        return from_pretrained(cfg.pretrained, num_classes=data.num_classes, img_size=size, **overrides)
    if cfg.model == "auto":
        return model_from_config(auto_model_config(data, overrides))
    args = dict(img_size=data.img_size, in_chans=data.in_chans, num_classes=data.num_classes)
    args.update(overrides)
    return model_from_config(get_config(cfg.model, **args))


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    return optim.build_optimizer(model, cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 betas=tuple(cfg.betas), momentum=cfg.momentum)


def lr_lambda(cfg: TrainConfig, total_steps: int, warmup_steps: int):
    """Linear warmup from 0, then cosine or linear decay to min_lr; a factor of cfg.lr per step."""
    floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        decay = 0.5 * (1 + math.cos(math.pi * t)) if cfg.schedule == "cosine" else 1 - t
        return floor + (1 - floor) * decay

    if cfg.schedule not in ("cosine", "linear"):
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose cosine or linear")
    return f


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 100_003 + step * 1009 + rank * 7) % (2**63)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


# ----------------------------------------------------------------------------------------- the step
def train_step(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], optimizer, cfg: TrainConfig,
               num_classes: int, device: torch.device, precision: str, scaler=None,
               augment: BatchAugment | None = None) -> tuple[float, float]:
    """One optimiser step over `accum` micro-batches of uint8 images: returns (mean loss, grad norm).

    The loss of each micro-batch is divided by their number, so K micro-batches of B give the same
    gradient as one batch of K*B; under DDP, gradients are all-reduced on the last micro-batch only.
    """
    total = 0.0
    n = len(batches)
    for i, (xb, yb) in enumerate(batches):
        if augment is not None:
            xb = augment(xb.to(device))
        x = prepare(xb, _unwrap(model), device)
        y = yb.to(device)
        targets = soft_targets(y, num_classes, cfg.label_smoothing)
        x, targets = mixup(x, targets, cfg.mixup)
        sync = nullcontext() if i == n - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, precision):
                logits = model(x)
            loss = soft_cross_entropy(logits, targets) / n
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
        total += loss.item()
    if scaler is not None:
        scaler.unscale_(optimizer)
    clip = cfg.clip_grad if cfg.clip_grad > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True).item()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, grad_norm


def consolidate(optimizer: torch.optim.Optimizer) -> None:
    """A sharded optimiser (Muon under DDP) gathers its state on rank 0 before a checkpoint; all ranks
    must call this, rank 0 then writes."""
    if hasattr(optimizer, "consolidate_state_dict"):
        optimizer.consolidate_state_dict(to=0)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


# ------------------------------------------------------------------------------------ checkpointing
def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    np_state = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(np_state[1].astype("int64")), "pos": int(np_state[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no checkpoint to resume from") from None
    except Exception as e:
        raise TrainingError(f"{path}: cannot read checkpoint (truncated or corrupt?): {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a mixerlab training checkpoint")
    return ckpt


# -------------------------------------------------------------------------------------------- train
class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checks it between steps and checkpoints before leaving."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.set:  # a second signal: leave now
            raise KeyboardInterrupt
        self.set = True
        log.warning("signal %d: stopping after this step and saving a checkpoint", signum)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(cfg: TrainConfig | None = None, resume: str | None = None, stop_after_steps: int | None = None,
          resume_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a new training (`cfg`) or resume the run in folder `resume` with its saved config, changing
    only `resume_overrides` (e.g. {"epochs": 20} to train longer). Returns the summary.
    `stop_after_steps` stops, as a SIGTERM would, after that many steps of this call (tests use it)."""
    ckpt = None
    if resume:
        run_dir = Path(resume)
        ckpt = load_checkpoint(run_dir / "last.pt")
        cfg = TrainConfig.from_dict({**ckpt["train_config"], **(resume_overrides or {}), "out": str(run_dir)})
    elif cfg is None:
        raise ValueError("train() needs a TrainConfig or a run folder to resume")
    else:
        run_dir = Path(cfg.out)
        if (run_dir / "last.pt").exists():
            raise TrainingError(f"{run_dir} already holds a run: resume it with --resume {run_dir}, "
                                f"or choose another --out")

    ctx = dist_utils.setup(cfg.device)
    rank, world, device = ctx.rank, ctx.world_size, ctx.device
    is_main = rank == 0
    if not is_main or cfg.quiet:
        logging.getLogger("mixerlab").setLevel(logging.WARNING)
    precision = pick_precision(cfg.precision, device)
    if device.type == "cpu":
        tune_cpu_allocator()
    torch.manual_seed(cfg.seed)

    size = (cfg.img_size, cfg.img_size) if cfg.img_size and not cfg.pretrained else None
    data = load_dataset(cfg.data, cfg.data_dir, size, cfg.val_split, cfg.seed, cfg.strict)
    model = build_model(cfg, data).to(device)
    raw_model = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(cfg, raw_model)
    micro, accum = cfg.batch_size, cfg.accum_steps
    n_train = len(data.train)
    steps_per_epoch = n_train // (micro * accum * world)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise TrainingError(f"{n_train} training images is less than one global batch "
                            f"({micro} x {accum} accum x {world} processes)")
    total_steps = steps_per_epoch * cfg.epochs
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps, max(warmup, 1)))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    ema = None
    if cfg.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(raw_model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    augment = BatchAugment(cfg.crop_pad, cfg.flip, cfg.randaug_n, cfg.randaug_m)

    start_epoch, start_step, best_top1, best_epoch, train_time = 0, 0, -1.0, -1, 0.0
    metrics: list[dict[str, Any]] = []
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_step = ckpt["epoch"], ckpt["step_in_epoch"]
        best_top1, best_epoch, train_time = ckpt["best_top1"], ckpt["best_epoch"], ckpt["train_time_s"]
        metrics = [m for m in ckpt.get("metrics", []) if m["epoch"] <= start_epoch]
        if ckpt.get("world_size", world) != world:
            log.warning("resuming a %d-process run with %d processes: the weights, optimiser and schedule "
                        "continue exactly; the data order from here on differs", ckpt["world_size"], world)
        log.info("resumed %s at epoch %d, step %d", run_dir, start_epoch + 1, start_step)

    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", {
            "model": raw_model.config.to_dict(), "train": cfg.to_dict(), "classes": data.classes,
            "precision": precision, "world_size": world, "global_batch": micro * accum * world,
        })
    log.info("%s: %s, %s params, %d classes, %s; %d steps/epoch of %d images (%d x %d accum x %d proc), %s",
             cfg.data, raw_model.config.arch, f"{count_params(raw_model):,}", data.num_classes,
             "x".join(map(str, data.img_size)), steps_per_epoch, micro * accum * world, micro, accum, world,
             precision)

    def checkpoint_payload(epoch: int, step: int) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "config": raw_model.config.to_dict(), "train_config": cfg.to_dict(),
            "classes": data.classes, "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch,
            "step_in_epoch": step, "best_top1": best_top1, "best_epoch": best_epoch, "train_time_s": train_time,
            "metrics": metrics, "world_size": world, "rng": _rng_state(),
        }

    steps_done = 0
    stopped = False
    from torch.utils.data import DistributedSampler
    from tqdm import tqdm

    with _StopFlag() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            sampler = DistributedSampler(range(n_train), num_replicas=world, rank=rank, shuffle=True,
                                         seed=cfg.seed, drop_last=True)
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler))
            model.train()
            t_epoch, data_time, loss_sum, loss_n = time.perf_counter(), 0.0, 0.0, 0
            bar = tqdm(range(start_step, steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not is_main or cfg.quiet, dynamic_ncols=True, leave=True)
            for step in bar:
                torch.manual_seed(step_seed(cfg.seed, epoch, step, rank))
                t0 = time.perf_counter()
                base = step * micro * accum
                idx = [order[base + i * micro: base + (i + 1) * micro] for i in range(accum)]
                batches = [(augment(data.train.images[i].to(device)), data.train.labels[i]) for i in idx]
                data_time += time.perf_counter() - t0
                loss, _ = train_step(model, batches, optimizer, cfg, data.num_classes, device, precision, scaler)
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(raw_model)
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"loss became {loss} at epoch {epoch + 1}, step {step + 1}; stopping. The last good "
                        f"checkpoint is kept in {run_dir / 'last.pt'} (try a lower --lr or --precision fp32)")
                loss_sum, loss_n = loss_sum + loss, loss_n + 1
                steps_done += 1
                if is_main and not cfg.quiet and step % 10 == 0:
                    done = max(step + 1 - start_step, 1)
                    bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}",
                                    img_s=f"{done * micro * accum * world / (time.perf_counter() - t_epoch):.0f}")
                want_stop = stop.set or (stop_after_steps is not None and steps_done >= stop_after_steps)
                if dist_utils.any_rank(want_stop, device):
                    train_time += time.perf_counter() - t_epoch
                    consolidate(optimizer)
                    if is_main:
                        save_checkpoint(run_dir / "last.pt", checkpoint_payload(epoch, step + 1))
                        log.warning("stopped at epoch %d, step %d; resume with: %s",
                                    epoch + 1, step + 1, resume_command(run_dir, world))
                    stopped = True
                    break
            bar.close()
            if stopped:
                break
            epoch_time = time.perf_counter() - t_epoch
            train_time += epoch_time
            n_steps = steps_per_epoch - start_step
            start_step = 0
            eval_model = ema.module if ema is not None else raw_model
            ev = evaluate(eval_model, data.val, data.num_classes, device, cfg.eval_batch_size, precision,
                          rank, world)
            train_loss = dist_utils.mean_across(loss_sum / max(loss_n, 1), device)
            m = {
                "epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "train_loss": train_loss,
                "val_loss": ev["loss"], "val_top1": ev["top1"], "val_top5": ev["top5"],
                "lr": scheduler.get_last_lr()[0],
                "images_per_s": n_steps * micro * accum * world / epoch_time,
                "data_time_share": data_time / epoch_time, "elapsed_s": train_time,
            }
            metrics.append(m)
            improved = ev["top1"] > best_top1
            if improved:
                best_top1, best_epoch = ev["top1"], epoch + 1
            consolidate(optimizer)
            if is_main:
                log.info("epoch %d: train loss %.4f, val loss %.4f, top-1 %.2f%%, top-5 %.2f%%, %.0f img/s",
                         epoch + 1, train_loss, ev["loss"], 100 * ev["top1"], 100 * ev["top5"], m["images_per_s"])
                with open(run_dir / "metrics.jsonl", "w") as f:  # rewritten whole: a resume never duplicates
                    f.writelines(json.dumps(r) + "\n" for r in metrics)
                save_checkpoint(run_dir / "last.pt", checkpoint_payload(epoch + 1, 0))
                if improved:
                    save_checkpoint(run_dir / "best.pt", {
                        "format": CHECKPOINT_FORMAT, "config": raw_model.config.to_dict(), "classes": data.classes,
                        "model": eval_model.state_dict(), "epoch": epoch + 1, "val": ev,
                    })
                    atomic_write_json(run_dir / "best_eval.json", ev)

    summary = {}
    if is_main and not stopped:
        summary = finish_run(run_dir, raw_model, data, metrics, best_epoch, train_time, world, precision)
    dist_utils.cleanup(ctx)
    if stopped:
        # Only rank 0 carries the command, so a launcher prints it once, not once per process.
        return {"stopped": True, "run_dir": str(run_dir),
                "resume_command": resume_command(run_dir, world) if is_main else None}
    return summary


def resume_command(run_dir: Path, world: int) -> str:
    """The command that continues a stopped run: the same launcher, with --resume."""
    how = "mixerlab train" if world == 1 else f"torchrun --nproc_per_node {world} -m mixerlab train"
    return f"{how} --resume {run_dir}"


def finish_run(run_dir: Path, model: nn.Module, data: Dataset, metrics: list[dict[str, Any]], best_epoch: int,
               train_time: float, world: int, precision: str) -> dict[str, Any]:
    from .report import plot_confusion, plot_curves, write_report

    best = json.loads((run_dir / "best_eval.json").read_text())
    summary = {
        "val_top1": best["top1"], "val_top5": best["top5"], "best_epoch": best_epoch,
        "params": count_params(model), "train_time_s": train_time, "world_size": world,
        "dataset": data.name, "model": _model_name(model), "epochs": len(metrics), "precision": precision,
        "final_val_top1": metrics[-1]["val_top1"] if metrics else None,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    plot_curves(metrics, run_dir)
    plot_confusion(best["confusion"], data.classes, run_dir / "confusion.png")
    write_report(run_dir, summary, metrics, best["per_class"], data.classes)
    log.info("done: best top-1 %.2f%% at epoch %d; report in %s", 100 * best["top1"], best_epoch,
             run_dir / "report.md")
    return summary


def _model_name(model: nn.Module) -> str:
    c = model.config
    if c.arch == "mixer":
        return f"mixer C{c.embed_dim} DS{c.tokens_mlp_dim} DC{c.channels_mlp_dim} N{c.depth} P{c.patch_size}"
    return f"vit C{c.embed_dim} H{c.num_heads} N{c.depth} P{c.patch_size}"

