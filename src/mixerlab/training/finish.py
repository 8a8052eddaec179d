"""The end of a finished run: the test score of the model it keeps, summary.json, the plots, sample
predictions, the hardest images and the report (report.md and report.html)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn as nn

from ..evaluate import evaluate
from ..io_utils import atomic_write_json
from ..models.flops import count_params
from ..report import STEP_FIELDS, plot_confusion, plot_curves, plot_hardest, plot_samples, write_report
from ..viz.figures import token_mixing_figure
from .checkpoint import load_checkpoint

log = logging.getLogger(__name__)

SAMPLES = 16  # the first images of the scored split, drawn with the model's answer


def finish_run(run: Any) -> dict[str, Any]:
    """summary.json, the plots and the report of a finished run (`run`: loop.Run). A built-in set's
    test images are scored here, once, with the model best.pt holds; they never chose anything."""
    p, best = run.progress, run.progress.best_eval
    name, _ = run.epoch_split
    summary = {
        "selected_on": "val" if name == "val" else "last epoch", "best_epoch": p.best_epoch,
        "params": count_params(run.model), "train_time_s": p.train_time_s, "world_size": run.ctx.world_size,
        "dataset": run.data.name, "model": _model_name(run.model), "epochs": len(p.metrics),
        "precision": run.precision,
    }
    if name == "val":
        summary.update(val_top1=best["top1"], val_top5=best["top5"],
                       final_val_top1=p.metrics[-1]["val_top1"] if p.metrics else None)
    if run.data.test is not None:  # a built-in set: the model best.pt holds, on the test images
        split_name, split, kept, label = "test", run.data.test, _kept_model(run), f"best.pt (epoch {p.best_epoch})"
    else:  # a folder or shards: what the final model gets wrong on the validation images
        split_name, split, kept = "val", run.data.val, run.eval_model
        label = f"the final model (epoch {len(p.metrics)})"
    log.info("scoring %s on the %s split (%s images)", label, split_name, f"{len(split):,}")
    final = evaluate(kept, split, run.data.num_classes, run.device, run.cfg.eval_batch_size, run.precision,
                     progress=not run.cfg.quiet, hardest=16)
    if split_name == "test":
        summary.update(test_top1=final["top1"], test_top5=final["top5"])
    atomic_write_json(run.run_dir / "summary.json", summary)
    log.info("drawing the plots and writing the report")
    plot_hardest(final.pop("hardest_images"), final["hardest"], run.data.classes, run.run_dir / "hardest.png")
    plot_confusion(final["confusion"], run.data.classes, run.run_dir / "confusion.png",
                   f"confusion matrix of {label} on the {split_name} images (rows: true class)")
    atomic_write_json(run.run_dir / "final_eval.json", {**final, "split": split_name, "model": label})
    plot_curves(p.metrics, run.run_dir, [dict(zip(STEP_FIELDS, r)) for r in p.steps])
    _samples(kept, split, run, run.run_dir / "samples.png", f"the first {split_name} images: {label}'s answer")
    if run.model.config.arch == "mixer":
        token_mixing_figure(kept, 0, run.run_dir)
    write_report(run.run_dir)
    log.info("done: %s top-1 %.2f%% (%s); report in %s", split_name, 100 * final["top1"], label,
             run.run_dir / "report.md")
    return summary


def _kept_model(run: Any) -> nn.Module:
    """The model best.pt holds: the one `eval`, `predict` and `serve` load from the run folder."""
    if run.progress.best_epoch == len(run.progress.metrics):  # the last epoch was the best (or was kept)
        return run.eval_model
    model = copy.deepcopy(run.eval_model)
    model.load_state_dict(load_checkpoint(run.run_dir / "best.pt")["model"])
    return model


@torch.no_grad()
def _samples(model: nn.Module, split: Any, run: Any, path, title: str) -> None:
    from ..data.transforms import prepare
    from ..perf.runtime import autocast

    batch = next(iter(split.eval_batches(model.config, SAMPLES)), None)
    if batch is None:
        return
    _, images, labels, _ = batch
    model.eval()
    with autocast(run.device, run.precision):
        probs = model(prepare(images, model, run.device)).float().softmax(-1).cpu()
    conf, pred = probs.max(-1)
    plot_samples(images, labels.tolist(), pred.tolist(), conf.tolist(), run.data.classes, path, title)


def _model_name(model: nn.Module) -> str:
    c = model.config
    if c.arch == "mixer":
        return f"mixer C{c.embed_dim} DS{c.tokens_mlp_dim} DC{c.channels_mlp_dim} N{c.depth} P{c.patch_size}"
    return f"vit C{c.embed_dim} H{c.num_heads} N{c.depth} P{c.patch_size}"
