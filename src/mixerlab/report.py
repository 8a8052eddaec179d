"""Plots (matplotlib PNG) and the markdown report of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(metrics: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """loss.png, accuracy.png and lr.png from the per-epoch metrics."""
    plt = _plt()
    if not metrics:
        return []
    ep = [m["epoch"] for m in metrics]
    paths = []
    for name, series, ylabel in (
        ("loss", [("train_loss", "train"), ("val_loss", "val")], "cross-entropy"),
        ("accuracy", [("val_top1", "val top-1"), ("val_top5", "val top-5")], "accuracy"),
        ("lr", [("lr", "learning rate")], "learning rate (end of epoch)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in series:
            ax.plot(ep, [m[key] for m in metrics], marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str = "") -> Path:
    import numpy as np

    plt = _plt()
    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(classes)
    size = max(5, min(0.5 * n + 2, 20))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=60, ha="right")
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (rows: true class)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(run_dir: Path, summary: dict[str, Any], metrics: list[dict[str, Any]],
                 per_class: list[float], classes: list[str]) -> Path:
    lines = [
        f"# Run report: {summary['model']} on {summary['dataset']}",
        "",
        f"- validation top-1 **{100 * summary['val_top1']:.2f}%**, top-5 {100 * summary['val_top5']:.2f}% "
        f"(best epoch {summary['best_epoch']})",
        f"- {summary['params']:,} parameters, {summary['train_time_s']:.0f} s of training, "
        f"world size {summary['world_size']}, precision {summary['precision']}",
        "",
        "| epoch | train loss | val loss | val top-1 | val top-5 | lr | img/s | data time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in metrics:
        lines.append(
            f"| {m['epoch']} | {m['train_loss']:.4f} | {m['val_loss']:.4f} | {100 * m['val_top1']:.2f}% | "
            f"{100 * m['val_top5']:.2f}% | {m['lr']:.2e} | {m['images_per_s']:.0f} | "
            f"{100 * m['data_time_share']:.1f}% |"
        )
    lines += ["", "![loss](loss.png) ![accuracy](accuracy.png) ![lr](lr.png)", "",
              "## Per-class accuracy (best checkpoint)", "", "| class | top-1 |", "| --- | --- |"]
    lines += [f"| {c} | {100 * a:.2f}% |" for c, a in zip(classes, per_class)]
    lines += ["", "![confusion matrix](confusion.png)", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
