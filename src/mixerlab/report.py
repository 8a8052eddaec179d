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


def plot_hardest(images, hardest: list[dict[str, Any]], classes: list[str], path: Path) -> Path | None:
    """The most confident mistakes with their true and predicted class: `hardest` and `images` are
    what evaluate(hardest=N) returned under "hardest" and "hardest_images" (uint8 (C, H, W) each)."""
    if not hardest:
        return None
    plt = _plt()
    cols = min(8, len(hardest))
    rows = (len(hardest) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 2.2 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, h, image in zip(axes.flat, hardest, images):
        im = image.permute(1, 2, 0).numpy()
        ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray" if im.shape[-1] == 1 else None)
        ax.set_title(f"{classes[h['true']]}\n-> {classes[h['predicted']]} {100 * h['confidence']:.0f}%", fontsize=7)
    fig.suptitle("most confident mistakes: true -> predicted (confidence)", fontsize=9)
    fig.tight_layout(h_pad=1.5)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def class_rows(ev: dict[str, Any], classes: list[str]) -> list[list[str]]:
    """Per class: images, accuracy (= recall), precision."""
    counts = [sum(r) for r in ev["confusion"]]
    return [[c, str(n), f"{100 * a:.2f}%", f"{100 * p:.2f}%"]
            for c, n, a, p in zip(classes, counts, ev["per_class"], ev.get("precision_per_class", ev["per_class"]))]


class Document:
    """A report as blocks, rendered to markdown (images linked) and to one self-contained HTML file
    (images embedded), so that the HTML opens in a browser offline and can be sent as one file."""

    def __init__(self, title: str):
        self.title, self.blocks = title, []

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def image(self, path: Path | None, alt: str) -> None:
        if path is not None and Path(path).is_file():
            self.blocks.append(("img", Path(path), alt))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "h2":
                out += [f"## {b[1]}", ""]
            elif b[0] == "table":
                out += ["| " + " | ".join(b[1]) + " |", "|" + " --- |" * len(b[1])]
                out += ["| " + " | ".join(r) + " |" for r in b[2]] + [""]
            else:
                out += [f"![{b[2]}]({b[1].name})", ""]
        return "\n".join(out)

    def html(self) -> str:
        import base64
        import html

        e = html.escape
        out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(self.title)}</title>",
               "<style>body{font:14px system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}"
               "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.2rem .6rem;"
               "text-align:right}th:first-child,td:first-child{text-align:left}img{max-width:100%}</style>",
               f"</head><body><h1>{e(self.title)}</h1>"]
        for b in self.blocks:
            if b[0] == "p":
                out.append(f"<p>{e(b[1]).replace('**', '')}</p>")
            elif b[0] == "h2":
                out.append(f"<h2>{e(b[1])}</h2>")
            elif b[0] == "table":
                out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in b[1]) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2]]
                out.append("</table>")
            else:
                data = base64.b64encode(b[1].read_bytes()).decode()
                out.append(f"<figure><img alt='{e(b[2])}' src='data:image/png;base64,{data}'>"
                           f"<figcaption>{e(b[2])}</figcaption></figure>")
        return "\n".join(out + ["</body></html>"])

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        from .io_utils import atomic_write_bytes

        md, htm = folder / f"{stem}.md", folder / f"{stem}.html"
        atomic_write_bytes(md, self.markdown().encode())
        atomic_write_bytes(htm, self.html().encode())
        return md, htm


def add_evaluation(doc: Document, ev: dict[str, Any], classes: list[str], folder: Path, stem: str) -> None:
    """Per-class table, confusion matrix, hardest images and the first block's token mixing."""
    doc.heading("Per class")
    doc.table(["class", "images", "accuracy (recall)", "precision"], class_rows(ev, classes))
    doc.image(folder / f"{stem}confusion.png", "confusion matrix (rows: true class)")
    doc.heading("Most confident mistakes")
    cm = ev["confusion"]
    wrong = sum(map(sum, cm)) - sum(cm[i][i] for i in range(len(cm)))
    if wrong == 0:  # decided by the counts, never by whether a figure was drawn
        doc.para("No image was misclassified.")
    elif ev.get("hardest") and (folder / f"{stem}hardest.png").is_file():
        doc.para(f"{wrong:,} of {sum(map(sum, cm)):,} images were misclassified; the "
                 f"{len(ev['hardest'])} most confident mistakes:")
        doc.image(folder / f"{stem}hardest.png", ev.get("hardest_caption", "the validation images misclassified "
                                                                            "with the highest confidence"))
    else:
        doc.para(f"{wrong:,} of {sum(map(sum, cm)):,} images were misclassified.")
    doc.heading("What the first layer's token mixing learned")
    doc.image(folder / "token_mixing_block0_first64.png",
              "first 64 hidden units of block 0's token-mixing MLP over the patch grid, low frequency first, "
              "each beside its closest inverse (mixerlab viz draws every block)")


def write_report(run_dir: Path, summary: dict[str, Any], metrics: list[dict[str, Any]], best: dict[str, Any],
                 classes: list[str]) -> Path:
    """report.md and report.html of a training run."""
    doc = Document(f"Run report: {summary['model']} on {summary['dataset']}")
    doc.para(f"validation top-1 **{100 * summary['val_top1']:.2f}%**, top-5 {100 * summary['val_top5']:.2f}% "
             f"(best epoch {summary['best_epoch']}); {summary['params']:,} parameters, "
             f"{summary['train_time_s']:.0f} s of training, world size {summary['world_size']}, "
             f"precision {summary['precision']}")
    doc.table(["epoch", "train loss", "val loss", "val top-1", "val top-5", "lr", "grad norm", "img/s", "data time"],
              [[str(m["epoch"]), f"{m['train_loss']:.4f}", f"{m['val_loss']:.4f}", f"{100 * m['val_top1']:.2f}%",
                f"{100 * m['val_top5']:.2f}%", f"{m['lr']:.2e}", f"{m.get('grad_norm', float('nan')):.3f}",
                f"{m['images_per_s']:.0f}", f"{100 * m['data_time_share']:.1f}%"] for m in metrics])
    for name in ("loss", "accuracy", "lr"):
        doc.image(run_dir / f"{name}.png", name)
    add_evaluation(doc, best, classes, run_dir, "")
    return doc.write(run_dir, "report")[0]
