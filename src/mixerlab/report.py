"""Plots (matplotlib PNG) and the markdown report of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


STEP_FIELDS = ("step", "loss", "train_top1", "lr")  # a line of steps.jsonl; the trainer keeps rows in this order


def _epoch_split(metrics: list[dict[str, Any]]) -> str:
    """What the epochs were scored on: "val", or "test" for a run with no validation split."""
    return "val" if not metrics or "val_top1" in metrics[0] else "test"


def plot_curves(metrics: list[dict[str, Any]], out_dir: Path, steps: list[dict[str, Any]] | None = None) -> list[Path]:
    """loss.png, accuracy.png and lr.png against optimiser steps: the training loss, top-1 and learning
    rate of every step (`steps`, from steps.jsonl) and the per-epoch evaluation as points."""
    plt = _plt()
    if not metrics:
        return []
    steps = steps or []
    split = _epoch_split(metrics)
    x_ep = [m["step"] for m in metrics]
    xs = [r["step"] for r in steps]
    paths = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(7, 4))
    if steps:
        ax.plot(xs, [r["loss"] for r in steps], lw=0.6, alpha=0.35, color="C0", label="train, each step")
        ax.plot(xs, _smooth([r["loss"] for r in steps]), color="C0", label="train, running mean")
    ax.plot(x_ep, [m["train_loss"] for m in metrics], "o", color="C0", mfc="white", label="train, epoch mean")
    ax.plot(x_ep, [m[f"{split}_loss"] for m in metrics], "o-", color="C1", label=f"{split}, end of epoch")
    ax.set(xlabel="optimiser step", ylabel="cross-entropy (train: with label smoothing)", title="loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "loss")

    fig, (a1, a5) = plt.subplots(1, 2, figsize=(10, 4))
    if steps:
        a1.plot(xs, _smooth([100 * r["train_top1"] for r in steps]), color="C0", label="train, running mean")
    if "train_top1" in metrics[0]:
        a1.plot(x_ep, [100 * m["train_top1"] for m in metrics], "o", color="C0", mfc="white",
                label="train, epoch mean (augmented images)")
    a1.plot(x_ep, [100 * m[f"{split}_top1"] for m in metrics], "o-", color="C1", label=f"{split}, end of epoch")
    a1.set(xlabel="optimiser step", ylabel="top-1 accuracy (%)", title="top-1")
    a5.plot(x_ep, [100 * m[f"{split}_top5"] for m in metrics], "o-", color="C2", label=f"{split}, end of epoch")
    a5.set(xlabel="optimiser step", ylabel="top-5 accuracy (%)", title="top-5")
    for ax in (a1, a5):
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, "accuracy")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    if steps:
        ax.plot(xs, [r["lr"] for r in steps], color="C3")
    else:
        ax.plot(x_ep, [m["lr"] for m in metrics], "o-", color="C3")
    ax.set(xlabel="optimiser step", ylabel="learning rate", title="learning rate of each step (warmup, then decay)")
    ax.grid(alpha=0.3)
    save(fig, "lr")
    return paths


def _smooth(values: list[float], window: int | None = None) -> list[float]:
    """Running mean over the last `window` values (a 50th of the run, at least 1)."""
    window = window or max(1, len(values) // 50)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str = "") -> Path:
    import numpy as np

    plt = _plt()
    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(classes)
    size = max(5, min(0.5 * n + 2, 20))
    fig, ax = plt.subplots(figsize=(size, size))
    shown = ax.imshow(100 * norm, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's images (%)")
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
    ax.set_title(title or "confusion matrix: image counts, colour by row share (rows: true class)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_hardest(images, hardest: list[dict[str, Any]], classes: list[str], path: Path) -> Path | None:
    """The most confident mistakes with their true and predicted class: `hardest` and `images` are
    what evaluate(hardest=N) returned under "hardest" and "hardest_images" (uint8 (C, H, W) each)."""
    if not hardest:
        return None
    titles = [(f"{classes[h['true']]}\n-> {classes[h['predicted']]} {100 * h['confidence']:.0f}%", "black")
              for h in hardest]
    _image_grid(images, titles, "most confident mistakes: true -> predicted (confidence)", path, 2.2, 1.5)
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


def add_evaluation(doc: Document, ev: dict[str, Any], classes: list[str], folder: Path, stem: str,
                   heading: str = "Per class") -> None:
    """Per-class table, confusion matrix, hardest images and the first block's token mixing."""
    doc.heading(heading)
    doc.table(["class", "images", "accuracy (recall)", "precision"], class_rows(ev, classes))
    doc.image(folder / f"{stem}confusion.png", "confusion matrix: the count of images of each true class (row) "
                                               "given each predicted class (column); colour: the row's share")
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
              "first 64 hidden units of block 0's token-mixing MLP: each unit's input weights laid out over the "
              "patch grid (red positive, blue negative, scaled to the unit's largest), low frequency first, "
              "each beside its closest inverse (mixerlab viz draws every block)")


def plot_samples(images, labels: list[int], predicted: list[int], confidence: list[float], classes: list[str],
                 path: Path, title: str) -> Path:
    """The first images of a split with the model's answer: green when right, red when wrong."""
    titles = [(f"{classes[p]} {100 * c:.0f}%" + ("" if p == y else f"\n(is {classes[y]})"),
               "green" if p == y else "red") for y, p, c in zip(labels, predicted, confidence)]
    return _image_grid(images, titles, title, path, 2.0, 1.2)


def _image_grid(images, titles: list[tuple[str, str]], suptitle: str, path: Path, row_height: float,
                h_pad: float) -> Path:
    """uint8 (C, H, W) images in rows of up to 8, each under its (title, colour)."""
    plt = _plt()
    cols = min(8, len(titles))
    rows = (len(titles) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * row_height + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, (text, colour) in zip(axes.flat, images, titles):
        im = image.permute(1, 2, 0).numpy()
        ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray" if im.shape[-1] == 1 else None)
        ax.set_title(text, fontsize=7, color=colour)
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout(h_pad=h_pad)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _read(path: Path) -> Any:
    import json

    if not path.is_file():
        return None
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def _headline(summary: dict[str, Any]) -> str:
    if summary.get("test_top1") is not None:
        chosen = (f"best.pt, chosen on validation at epoch {summary['best_epoch']} (val top-1 "
                  f"{100 * summary['val_top1']:.2f}%)" if summary.get("selected_on") == "val" else
                  "the last epoch's model: with no validation split nothing was chosen")
        head = (f"test top-1 **{100 * summary['test_top1']:.2f}%**, top-5 {100 * summary['test_top5']:.2f}% "
                f"({chosen})")
    else:
        head = (f"validation top-1 **{100 * summary['val_top1']:.2f}%**, top-5 {100 * summary['val_top5']:.2f}% "
                f"(best epoch {summary['best_epoch']})")
    return (f"{head}; {summary['params']:,} parameters, {summary['train_time_s']:.0f} s of training, "
            f"world size {summary['world_size']}, precision {summary['precision']}")


def write_report(run_dir: Path) -> Path:
    """report.md and report.html of a training run, from what its folder holds: summary.json,
    metrics.jsonl, steps.jsonl, final_eval.json and the figures, and eval.json / eval_tta.json once
    `mixerlab eval` has scored the run (it calls this again)."""
    run_dir = Path(run_dir)
    summary, metrics = _read(run_dir / "summary.json"), _read(run_dir / "metrics.jsonl") or []
    classes = (_read(run_dir / "config.json") or {}).get("class_names") or []
    final = _read(run_dir / "final_eval.json")
    doc = Document(f"Run report: {summary['model']} on {summary['dataset']}")
    doc.para(_headline(summary))
    later = [(n, r) for n, r in (("eval.json", _read(run_dir / "eval.json")),
                                 ("eval_tta.json", _read(run_dir / "eval_tta.json"))) if r]
    if later:
        doc.heading("Scored by mixerlab eval")
        doc.table(["file", "data", "split", "flip TTA", "images", "top-1", "top-5"],
                  [[n, str(r.get("data", "")), str(r.get("split", "")), "yes" if r.get("tta") else "no",
                    f"{r['count']:,}", f"{100 * r['top1']:.2f}%", f"{100 * r['top5']:.2f}%"] for n, r in later])
    split = _epoch_split(metrics)
    doc.heading("Epochs")
    if split == "test":
        doc.para("There was no validation split (--val-split 0): each epoch was scored on the test images for "
                 "this table only, and the last epoch was kept.")
    doc.table(["epoch", "steps to its end", "train loss", "train top-1", f"{split} loss", f"{split} top-1",
               f"{split} top-5", "lr", "grad norm", "img/s", "data time"],
              [[str(m["epoch"]), f"{m['step']:,}" if "step" in m else "-", f"{m['train_loss']:.4f}",
                f"{100 * m['train_top1']:.2f}%" if "train_top1" in m else "-", f"{m[f'{split}_loss']:.4f}",
                f"{100 * m[f'{split}_top1']:.2f}%", f"{100 * m[f'{split}_top5']:.2f}%", f"{m['lr']:.2e}",
                f"{m.get('grad_norm', float('nan')):.3f}", f"{m['images_per_s']:.0f}",
                f"{100 * m['data_time_share']:.1f}%"] for m in metrics])
    doc.image(run_dir / "loss.png", f"loss against optimiser steps: training loss of each step (faint), its running "
                                    f"mean, and the {split} loss at the end of each epoch")
    doc.image(run_dir / "accuracy.png", f"top-1 (left: training batches as augmented, and {split} at the end of "
                                        f"each epoch) and {split} top-5 (right), against optimiser steps")
    doc.image(run_dir / "lr.png", "learning rate of each optimiser step: warmup, then decay")
    if final:
        what = f"the {final['split']} images, scored with {final['model']}"
        doc.heading(f"Sample predictions ({final['split']})")
        doc.image(run_dir / "samples.png", f"the first {final['split']} images and {final['model']}'s answer "
                                           "(green: right; red: wrong, with the true class)")
        add_evaluation(doc, {**final, "hardest_caption": f"the most confident mistakes on {what}"}, classes,
                       run_dir, "", f"Per class: {what}")
    return doc.write(run_dir, "report")[0]
