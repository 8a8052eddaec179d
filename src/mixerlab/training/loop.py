"""The trainer: one process, or many under `torchrun` (DistributedDataParallel).

Read it top to bottom: `Run` holds everything a run is built from and `state_dict` / `load_state_dict`
are its one checkpoint schema, used in both directions; `train_epoch` runs the steps of one epoch,
`end_epoch` evaluates and writes the checkpoints, and `train` is the loop around them. Everything
random in a step is a function of (seed, epoch, step, rank), so `--resume` continues bit for bit where
an interrupted run stopped. Only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from ..data.sources import load_dataset
from ..errors import TrainingError
from ..evaluate import evaluate
from ..io_utils import atomic_write_bytes, atomic_write_json
from ..models.flops import count_params
from ..perf.runtime import pick_precision
from ..perf.threads import StepWatch
from ..report import STEP_FIELDS
from . import auto, budget
from . import distributed as dist_utils
from .checkpoint import link_latest, open_run, remove_unstarted, resume_command, save_checkpoint
from .config import TrainConfig
from .control import StopFlag, quiet_logs
from .feed import make_feed, note_bad_images
from .finish import finish_run
from .recipes import check_recipe_data
from .setup import build_model, build_optimizer, lr_lambda
from .step import compile_for_training, step_seed, train_step
from .whiten import whiten_stem

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run stands: what a checkpoint holds besides the objects' own states."""

    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # steps of the current epoch done
    best_top1: float = -1.0
    best_epoch: int = -1
    best_eval: dict[str, Any] | None = None
    train_time_s: float = 0.0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    steps: list[list[float]] = field(default_factory=list)  # report.STEP_FIELDS of each of rank 0's steps
    # running sums of the current epoch, so that an epoch resumed in the middle reports all its steps
    epoch_loss_sum: float = 0.0
    epoch_grad_norm_sum: float = 0.0
    epoch_grad_norm_max: float = 0.0
    epoch_top1_sum: float = 0.0
    epoch_bad_images: int = 0  # files skipped while streaming, this epoch


# What differs between processes: each one's running sums (its own images' losses) mid-epoch.
PER_RANK = ("epoch_loss_sum", "epoch_grad_norm_sum", "epoch_grad_norm_max", "epoch_top1_sum", "epoch_bad_images")


@dataclass
class EpochStats:
    """One epoch: time and steps of this process's part of it, loss and gradient norm of all its steps."""

    seconds: float
    data_seconds: float
    steps: int
    mean_loss: float
    mean_grad_norm: float  # before clipping
    max_grad_norm: float
    train_top1: float  # of the augmented training batches, as the model stood at each step
    bad_images: int  # skipped by this process


class Run:
    """One training run, built once: data, model, optimiser, schedule, and where it stands."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, ctx: dist_utils.DistContext):
        given = cfg  # options left to `auto` are filled in once the data is known
        self.cfg, self.run_dir, self.ctx, self.device = cfg, run_dir, ctx, ctx.device
        self.is_main = ctx.rank == 0
        self.watch = StepWatch()  # step times, for the warning when other jobs take the cores
        self.precision = pick_precision(cfg.precision, ctx.device)
        if cfg.precision == "auto" and ctx.device.type == "cpu" and dist_utils.any_rank(self.precision != "bf16",
                                                                                    ctx.device):
            self.precision = "fp32"  # each process measured bf16 on its own: all of them must train alike
        torch.manual_seed(cfg.seed)
        size = (cfg.img_size, cfg.img_size) if cfg.img_size and not cfg.pretrained else None
        memory = int(cfg.memory_budget_gb * 1e9) if cfg.memory_budget_gb else None
        self.data = load_dataset(cfg.data, cfg.data_dir, size, cfg.val_split, cfg.seed, cfg.strict, stream=cfg.stream,
                                 workers=cfg.workers, val_data=cfg.val_data, budget_bytes=memory)
        check_recipe_data(cfg.recipe, cfg.data, self.data.in_chans, self.data.img_size)
        if self.data.val is None and getattr(self.data, "test", None) is None:
            raise TrainingError(f"{cfg.data}: --val-split 0 leaves no images to score the epochs on (a folder "
                                "without val/); give --val-split 0.1, or val/ and train/ folders")
        self.model = build_model(cfg, self.data)
        self.setup_seconds = 0.0  # work before the first step that belongs to training (the whitening)
        if cfg.stem_init == "whiten" and not cfg.pretrained:
            t = time.perf_counter()
            images = getattr(self.data.train, "images", None)
            if images is None:
                raise TrainingError(f"{cfg.data}: --stem-init whiten needs the training images in memory; this "
                                    "data streams from disk (use --no-stream if it fits, or --stem-init default)")
            whiten_stem(self.model, images)
            self.setup_seconds = time.perf_counter() - t
        self.model = self.model.to(self.device)
        self.ddp = self.model  # what the step calls: the DDP wrapper under torchrun
        if ctx.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:  # after the DDP wrapper, as torch recommends; evaluation runs the plain model
            self.ddp = compile_for_training(self.ddp)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.global_batch = cfg.batch_size * cfg.accum_steps * ctx.world_size
        self.steps_per_epoch = len(self.data.train) // self.global_batch
        if cfg.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise TrainingError(f"{len(self.data.train)} training images is less than one global batch "
                                f"({cfg.batch_size} x {cfg.accum_steps} accum x {ctx.world_size} processes)")
        fitted = None
        if cfg.time_budget and cfg.max_steps is None:  # a resumed run keeps the steps found when it began
            steps, measuring, fitted = budget.fit(self, cfg.time_budget, self.setup_seconds,
                                                  cfg.epochs or auto.MAX_EPOCHS)
            self.setup_seconds += measuring
            cfg = dataclasses.replace(cfg, max_steps=steps)
        if cfg.max_steps:  # no epoch past the last step; --epochs stays the most
            need = math.ceil(cfg.max_steps / self.steps_per_epoch)
            cfg = dataclasses.replace(cfg, epochs=min(cfg.epochs or need, need))
        self.cfg = cfg = auto.fill_from_data(cfg, self.data, self.steps_per_epoch)
        if self.is_main:
            if fitted:
                log.info(fitted)
            log.info(auto.describe(given, cfg, self.data, self.steps_per_epoch))
        total = self.total_steps = auto.total_steps(cfg.epochs, cfg.max_steps, self.steps_per_epoch)
        warmup = max(min(int(cfg.warmup_epochs * self.steps_per_epoch), total), 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, total, warmup))
        self.ema = None
        if cfg.ema > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        self.feed = make_feed(self)
        self.progress = Progress()

    def steps_in(self, epoch: int) -> int:
        """The steps of epoch `epoch` (0-based): all but in the last of a run that --max-steps cuts short."""
        return max(0, min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch))

    @property
    def epoch_split(self) -> tuple[str, Any]:
        """What each epoch is scored on: validation; with none (--val-split 0 on a built-in set), the
        test images, for the curve only."""
        return ("val", self.data.val) if self.data.val is not None else ("test", self.data.test)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # -- the checkpoint schema, both directions ---------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Model, optimiser, schedule, EMA, scaler and progress. No generator state: every draw in a
        step is seeded from (seed, epoch, step, rank) and nothing random happens between steps."""
        return {
            "config": self.model.config.to_dict(), "train_config": self.cfg.to_dict(),
            "class_names": self.data.classes, "world_size": self.ctx.world_size,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            **dataclasses.asdict(self.progress),
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        p = Progress(**{f.name: ckpt[f.name] for f in dataclasses.fields(Progress) if f.name in ckpt})
        ranks = ckpt.get("ranks") or []
        if len(ranks) == self.ctx.world_size:  # this process's own reader position and running sums
            self.feed.load_state_dict(ranks[self.ctx.rank]["loader"])
            for k in PER_RANK:
                setattr(p, k, ranks[self.ctx.rank][k])
        p.metrics = [m for m in p.metrics if m["epoch"] <= p.epoch]
        p.steps = [r for r in p.steps if r[0] <= p.epoch * self.steps_per_epoch + p.step_in_epoch]
        if p.best_eval is None and (self.run_dir / "best_eval.json").is_file():  # written before 0.2
            p.best_eval = json.loads((self.run_dir / "best_eval.json").read_text())
        self.progress = p
        if ckpt.get("world_size", self.ctx.world_size) != self.ctx.world_size:
            log.warning("resuming a %d-process run with %d processes: the weights, optimiser and schedule "
                        "continue exactly; the data order from here on differs", ckpt["world_size"],
                        self.ctx.world_size)
        log.info("resumed %s at epoch %d, step %d", self.run_dir, p.epoch + 1, p.step_in_epoch)

    def save_last(self) -> None:
        """last.pt; every rank calls it (a sharded optimiser gathers its state first, and every rank's
        shard reader its position mid-epoch: a folder's or memory's is the step alone), rank 0 writes."""
        if hasattr(self.optimizer, "consolidate_state_dict"):
            self.optimizer.consolidate_state_dict(to=0)
        p = self.progress
        mine = {"loader": self.feed.state_dict() if p.step_in_epoch else None,
                **{k: getattr(p, k) for k in PER_RANK}}
        ranks = dist_utils.gather_objects(mine)
        if self.is_main:
            save_checkpoint(self.run_dir / "last.pt", {**self.state_dict(), "ranks": ranks})

    def write_config(self) -> None:
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / "config.json", {
            "model": self.model.config.to_dict(), "train": self.cfg.to_dict(), "class_names": self.data.classes,
            "precision": self.precision, "world_size": self.ctx.world_size, "global_batch": self.global_batch,
        })
        c = self.cfg
        log.info("%s: %s, %s params, %d classes, %s; %d steps/epoch of %d images (%d x %d accum x %d proc), %s",
                 c.data, self.model.config.arch, f"{count_params(self.model):,}", self.data.num_classes,
                 "x".join(map(str, self.data.img_size)), self.steps_per_epoch, self.global_batch, c.batch_size,
                 c.accum_steps, self.ctx.world_size, self.precision)


# --------------------------------------------------------------------------------------- the loop
def train_epoch(run: Run, epoch: int, stop: StopFlag) -> EpochStats | None:
    """The steps of one epoch from where the run stands; None when it stopped early (last.pt written)."""
    cfg, ctx, p = run.cfg, run.ctx, run.progress
    run.ddp.train()
    start, t_epoch, data_time = p.step_in_epoch, time.perf_counter(), 0.0
    if start == 0:
        p.epoch_loss_sum = p.epoch_grad_norm_sum = p.epoch_grad_norm_max = p.epoch_top1_sum = 0.0
        p.epoch_bad_images = 0
    show = run.is_main and not cfg.quiet
    n = run.steps_in(epoch)
    bar = tqdm(range(start, n), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show,
               dynamic_ncols=True, leave=True)
    feed = run.feed.steps(epoch, start)
    for step in bar:
        torch.manual_seed(step_seed(cfg.seed, epoch, step, ctx.rank))
        t0 = time.perf_counter()
        batches, errors = next(feed)
        data_time += time.perf_counter() - t0
        if errors:
            note_bad_images(run, errors)
        t_step = time.perf_counter()
        loss, grad_norm, top1 = train_step(run.ddp, batches, run.optimizer, cfg, run.data.num_classes,
                                           run.device, run.precision, run.scaler)
        slow = run.watch.observe(time.perf_counter() - t_step, torch.get_num_threads())
        if slow and run.is_main and run.device.type == "cpu":
            log.warning(slow)
        if run.is_main:
            p.steps.append([epoch * run.steps_per_epoch + step + 1, loss, top1, run.scheduler.get_last_lr()[0]])
        run.scheduler.step()
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        if not math.isfinite(loss):
            raise TrainingError(
                f"loss became {loss} at epoch {epoch + 1}, step {step + 1}; stopping. The last good "
                f"checkpoint is kept in {run.run_dir / 'last.pt'} (try a lower --lr or --precision fp32)")
        p.epoch_loss_sum += loss
        p.epoch_grad_norm_sum += grad_norm
        p.epoch_grad_norm_max = max(p.epoch_grad_norm_max, grad_norm)
        p.epoch_top1_sum += top1
        done = step + 1 - start
        if show and step % 10 == 0:
            bar.set_postfix(loss=f"{p.epoch_loss_sum / (step + 1):.4f}",
                            img_s=f"{done * run.global_batch / (time.perf_counter() - t_epoch):.0f}")
        if dist_utils.any_rank(stop.step_done(), run.device):
            p.train_time_s += time.perf_counter() - t_epoch
            p.epoch, p.step_in_epoch = epoch, step + 1
            run.save_last()  # while the reader is open: a shard reader's position is saved with it
            feed.close()
            if run.is_main:
                log.warning("stopped at epoch %d, step %d; resume with: %s", epoch + 1, step + 1,
                            resume_command(run.run_dir, ctx.world_size))
            return None
    bar.close()
    feed.close()
    return EpochStats(time.perf_counter() - t_epoch, data_time, n - start, p.epoch_loss_sum / n,
                      p.epoch_grad_norm_sum / n, p.epoch_grad_norm_max, p.epoch_top1_sum / n, p.epoch_bad_images)


def end_epoch(run: Run, epoch: int, stats: EpochStats) -> None:
    """Evaluate, record the epoch's metrics, write last.pt (and best.pt when validation top-1 improved,
    or every epoch when there is no validation split: the last one is kept)."""
    p = run.progress
    p.train_time_s += stats.seconds
    name, split = run.epoch_split
    ev = evaluate(run.eval_model, split, run.data.num_classes, run.device, run.cfg.eval_batch_size,
                  run.precision, run.ctx.rank, run.ctx.world_size)
    ev.pop("hardest_images")
    m = {
        "epoch": epoch + 1, "step": epoch * run.steps_per_epoch + run.steps_in(epoch),
        "train_loss": dist_utils.mean_across(stats.mean_loss, run.device),
        # DDP all-reduces the gradients before their norm is taken: the same on every rank
        "grad_norm": stats.mean_grad_norm, "grad_norm_max": stats.max_grad_norm,
        "train_top1": dist_utils.mean_across(stats.train_top1, run.device),
        f"{name}_loss": ev["loss"], f"{name}_top1": ev["top1"], f"{name}_top5": ev["top5"],
        "lr": run.scheduler.get_last_lr()[0], "images_per_s": stats.steps * run.global_batch / stats.seconds,
        "data_time_share": stats.data_seconds / stats.seconds, "elapsed_s": p.train_time_s,
        "bad_images": round(dist_utils.mean_across(float(stats.bad_images), run.device) * run.ctx.world_size),
    }
    p.metrics.append(m)
    p.epoch, p.step_in_epoch = epoch + 1, 0
    improved = ev["top1"] > p.best_top1 or name == "test"  # test never chooses: the last epoch is kept
    if improved:
        p.best_top1, p.best_epoch, p.best_eval = ev["top1"], epoch + 1, ev
    run.save_last()
    if not run.is_main:
        return
    log.info("epoch %d: train loss %.4f, %s loss %.4f, top-1 %.2f%%, top-5 %.2f%%, %.0f img/s", epoch + 1,
             m["train_loss"], name, ev["loss"], 100 * ev["top1"], 100 * ev["top5"], m["images_per_s"])
    # rewritten whole (and atomically): a resume never duplicates a line, a crash never cuts one
    atomic_write_bytes(run.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in p.metrics).encode())
    atomic_write_bytes(run.run_dir / "steps.jsonl",
                       "".join(json.dumps(dict(zip(STEP_FIELDS, r))) + "\n" for r in p.steps).encode())
    if improved:
        save_checkpoint(run.run_dir / "best.pt", {
            "config": run.model.config.to_dict(), "class_names": run.data.classes,
            "model": run.eval_model.state_dict(), "epoch": epoch + 1, name: ev,
        })
        atomic_write_json(run.run_dir / "best_eval.json", ev)


def train(cfg: TrainConfig | None = None, resume: str | None = None, stop_after_steps: int | None = None,
          resume_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a new training (`cfg`) or resume the run in folder `resume` with its saved config, changing
    only `resume_overrides` (e.g. {"epochs": 20} to train longer). Returns the summary.
    `stop_after_steps` stops, as a SIGTERM would, after that many steps of this call (tests use it)."""
    named = cfg is not None and resume is None and cfg.out is None
    existed = cfg is not None and cfg.out is not None and Path(cfg.out).exists()
    cfg, run_dir, ckpt = open_run(cfg, resume, resume_overrides)
    if ckpt is not None and ckpt.get("epoch", 0) >= cfg.epochs and (run_dir / "summary.json").is_file():
        # A finished run: resuming it changes nothing, and must not rewrite its record (config.json,
        # summary.json and the report would take this launch's world size and batch).
        log.info("%s finished all its %d epochs already; nothing to do (pass --epochs N to train it further)",
                 run_dir, cfg.epochs)
        return {**json.loads((run_dir / "summary.json").read_text()), "already_finished": True}
    ctx = dist_utils.setup(cfg.device)
    finished, before = False, None
    try:
        if named and ctx.rank == 0:
            before = link_latest(run_dir)
            log.info("run folder: %s (runs/latest points at it)", run_dir)
        with quiet_logs(ctx.rank != 0 or cfg.quiet):
            summary = _train(cfg, run_dir, ckpt, ctx, stop_after_steps)
        finished = True
        return summary
    except BaseException:
        if ckpt is None and not existed and ctx.rank == 0:
            remove_unstarted(run_dir, before if named else None)
        raise
    finally:
        # After _train returns, nothing of the run (the DDP wrapper, the optimiser) holds the process
        # group any more, so it can be torn down while the interpreter is whole.
        dist_utils.cleanup(ctx, synchronise=finished)


def _train(cfg: TrainConfig, run_dir: Path, ckpt: dict[str, Any] | None, ctx: dist_utils.DistContext,
           stop_after_steps: int | None) -> dict[str, Any]:
    stopped = False
    # From the start: a Ctrl-C while the data loads reaches every process of a launch at once, and each
    # must stop at the same step (after the first), not some at once and some later (a second Ctrl-C
    # still leaves at once).
    with StopFlag(stop_after_steps) as stop:
        run = Run(cfg, run_dir, ctx)
        if ckpt is not None:
            run.load_state_dict(ckpt)
        else:
            run.progress.train_time_s = run.setup_seconds  # the whitening and the step's measuring are training
        run.write_config()
        for epoch in range(run.progress.epoch, run.cfg.epochs):
            stats = train_epoch(run, epoch, stop)
            if stats is None:
                stopped = True
                break
            end_epoch(run, epoch, stats)
    summary = finish_run(run) if run.is_main and not stopped else {}
    if stopped:
        # Only rank 0 carries the command, so a launcher prints it once, not once per process.
        return {"stopped": True, "run_dir": str(run_dir),
                "resume_command": resume_command(run_dir, ctx.world_size) if run.is_main else None}
    return summary
