"""The end of a finished run: summary.json, the plots, the final model's hardest images and the
report (report.md and report.html)."""

from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn

from ..evaluate import evaluate
from ..io_utils import atomic_write_json
from ..models.flops import count_params
from ..report import plot_confusion, plot_curves, plot_hardest, write_report
from ..viz.figures import token_mixing_figure

log = logging.getLogger(__name__)


def finish_run(run: Any) -> dict[str, Any]:
    """summary.json, the plots and report.md of a finished run (`run`: loop.Run)."""
    p, best = run.progress, run.progress.best_eval
    summary = {
        "val_top1": best["top1"], "val_top5": best["top5"], "best_epoch": p.best_epoch,
        "params": count_params(run.model), "train_time_s": p.train_time_s, "world_size": run.ctx.world_size,
        "dataset": run.data.name, "model": _model_name(run.model), "epochs": len(p.metrics),
        "precision": run.precision, "final_val_top1": p.metrics[-1]["val_top1"] if p.metrics else None,
    }
    atomic_write_json(run.run_dir / "summary.json", summary)
    plot_curves(p.metrics, run.run_dir)
    plot_confusion(best["confusion"], run.data.classes, run.run_dir / "confusion.png")
    # The hardest images of the final model: one more pass over the validation set on this process.
    final = evaluate(run.eval_model, run.data.val, run.data.num_classes, run.device, run.cfg.eval_batch_size,
                     run.precision, hardest=16)
    plot_hardest(final["hardest_images"], final["hardest"], run.data.classes, run.run_dir / "hardest.png")
    if run.model.config.arch == "mixer":
        token_mixing_figure(run.eval_model, 0, run.run_dir)
    shown = {**best, "hardest": final["hardest"],
             "hardest_caption": "the validation images the final model misclassified with the highest confidence"}
    write_report(run.run_dir, summary, p.metrics, shown, run.data.classes)
    log.info("done: best top-1 %.2f%% at epoch %d; report in %s", 100 * best["top1"], p.best_epoch,
             run.run_dir / "report.md")
    return summary


def _model_name(model: nn.Module) -> str:
    c = model.config
    if c.arch == "mixer":
        return f"mixer C{c.embed_dim} DS{c.tokens_mlp_dim} DC{c.channels_mlp_dim} N{c.depth} P{c.patch_size}"
    return f"vit C{c.embed_dim} H{c.num_heads} N{c.depth} P{c.patch_size}"
