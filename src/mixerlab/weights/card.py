"""The model card (`README.md`) of a Hub folder: YAML front matter the Hub reads (library, license,
tags, data, the measured metrics as `model-index`), then the model, its training, its measured
accuracy per class, its preprocessing and how to load it.

Every figure comes from the files of the run the model came from (`summary.json`, `final_eval.json`,
`eval_tta.json`, `config.json`); a model with no run behind it gets a card that says so, never an
invented number. Names from users' data (class names, the data path) are escaped for Markdown and
YAML, so that a name with newlines, markup or bytes that are not UTF-8 cannot break either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..models.flops import count_macs, count_params

# The Hub's ids of the built-in data sets
HUB_DATASETS = {"fashion-mnist": ("Fashion-MNIST", "zalando-datasets/fashion_mnist"),
                "mnist": ("MNIST", "ylecun/mnist"), "cifar10": ("CIFAR-10", "uoft-cs/cifar10"),
                "cifar100": ("CIFAR-100", "uoft-cs/cifar100")}


def clean(text: Any) -> str:
    """One line of printable text: bytes that are not UTF-8 (lone surrogates) as U+FFFD, newlines and
    other control characters as spaces."""
    return "".join(" " if ord(c) < 32 or ord(c) == 127 else "\ufffd" if 0xD800 <= ord(c) < 0xE000 else c
                   for c in str(text)).strip()


def md(text: Any) -> str:
    """Text for a Markdown table cell: HTML and Markdown markup shown as written, not interpreted."""
    s = clean(text)
    for c in "\\`*_{}[]<>|":  # enough for a table cell: no link, image, code, emphasis or HTML can start
        s = s.replace(c, "\\" + c)
    return s


def yaml_str(text: Any) -> str:
    """A YAML scalar for any text (JSON's quoting is valid YAML for printable text)."""
    return json.dumps(clean(text), ensure_ascii=False)


def run_folder(source: str | os.PathLike | None) -> Path | None:
    """The run folder `source` is, or is a checkpoint in; None for anything else."""
    if source is None:
        return None
    p = Path(source)
    for d in (p, p.parent):
        if d.is_dir() and (d / "summary.json").is_file():
            return d
    return None


def _read(folder: Path, name: str) -> dict[str, Any] | None:
    try:
        d = json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def run_facts(source: str | os.PathLike | None) -> dict[str, Any]:
    """What the run's files say: summary, the trainer's test scoring, a TTA scoring, its training
    config. Empty for a model with no run."""
    folder = run_folder(source)
    if folder is None:
        return {}
    facts = {"folder": folder, "summary": _read(folder, "summary.json") or {},
             "final": _read(folder, "final_eval.json"), "tta": _read(folder, "eval_tta.json"),
             "config": _read(folder, "config.json") or {}}
    return facts


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _metrics(facts: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(type, name, value in %) of the measured test figures."""
    final, tta = facts.get("final"), facts.get("tta")
    out = []
    if final and final.get("top1") is not None:
        out.append(("accuracy", f"Top-1 accuracy ({final.get('split', 'test')})", 100 * final["top1"]))
        if final.get("top5") is not None:
            out.append(("top_5_accuracy", f"Top-5 accuracy ({final.get('split', 'test')})", 100 * final["top5"]))
    if tta and tta.get("top1") is not None:
        out.append(("accuracy", f"Top-1 accuracy with {clean(tta.get('tta'))} TTA ({tta.get('split', 'test')})",
                    100 * tta["top1"]))
    return out


def _front_matter(name: str, license: str, arch: str, facts: dict[str, Any]) -> list[str]:
    data = (facts.get("summary") or {}).get("dataset")
    hub_data = HUB_DATASETS.get(str(data))
    lines = ["---", "library_name: timm", f"license: {yaml_str(license)}", "tags:", "- image-classification",
             "- timm", f"- {'mlp-mixer' if arch == 'mixer' else 'vision-transformer'}", "- mixerlab"]
    if hub_data:
        lines += ["datasets:", f"- {hub_data[1]}"]
    lines.append("pipeline_tag: image-classification")
    metrics = _metrics(facts)
    if metrics:
        ds_name, ds_type = hub_data or (clean(data), clean(data))
        lines += ["model-index:", f"- name: {yaml_str(name)}", "  results:", "  - task:",
                  "      type: image-classification", "      name: Image Classification", "    dataset:",
                  f"      name: {yaml_str(ds_name)}", f"      type: {yaml_str(ds_type)}",
                  f"      split: {yaml_str((facts.get('final') or {}).get('split', 'test'))}", "    metrics:"]
        for kind, label, value in metrics:
            lines += [f"    - type: {kind}", f"      value: {value:.2f}", f"      name: {yaml_str(label)}"]
    return lines + ["---", ""]


def _shape(model: nn.Module, arch: str) -> list[str]:
    c = model.config
    rows = [("architecture (timm)", f"`{arch}`"), ("input", f"{c.in_chans} x {c.img_size[0]} x {c.img_size[1]}"),
            ("patch size", c.patch_size), ("tokens", c.num_patches), ("width C", c.embed_dim), ("layers", c.depth)]
    if c.arch == "mixer":
        rows += [("token-mixing MLP D_S", c.tokens_mlp_dim), ("channel-mixing MLP D_C", c.channels_mlp_dim)]
    else:
        rows += [("heads", c.num_heads), ("MLP", c.mlp_dim)]
    rows += [("activation", c.act), ("classes", c.num_classes), ("parameters", f"{count_params(model):,}"),
             ("GMACs per image", f"{count_macs(model) / 1e9:.3f}")]
    return ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]


def _training(facts: dict[str, Any]) -> list[str]:
    s, cfg = facts.get("summary") or {}, (facts.get("config") or {}).get("train") or {}
    if not s:
        return ["No training run came with this model (it was converted from a checkpoint), so this card "
                "has no training details and no measured accuracy."]
    data = clean(s.get("dataset", cfg.get("data", "?")))
    args = cfg.get("model_args") or {}
    model = md(cfg.get("model", "?")) + (", " + ", ".join(f"{md(k)}={md(v)}" for k, v in sorted(args.items()))
                                         if args else "") + (f", img\\_size={cfg['img_size']}" if cfg.get("img_size")
                                                             else "")
    rows = [("data", md(data)), ("recipe", md(cfg.get("recipe", "?"))), ("model", model),
            ("epochs", s.get("epochs", "?")),
            ("optimizer", f"{md(cfg.get('optimizer', '?'))}, lr {cfg.get('lr', '?')}, weight decay "
                          f"{cfg.get('weight_decay', '?')}, {md(cfg.get('schedule', '?'))} schedule"),
            ("batch", (facts.get("config") or {}).get("global_batch", cfg.get("batch_size", "?"))),
            ("label smoothing", cfg.get("label_smoothing", "?")), ("precision", md(s.get("precision", "?"))),
            ("training time", f"{s['train_time_s']:.0f} s on {s.get('world_size', 1)} process(es)"
             if isinstance(s.get("train_time_s"), (int, float)) else "?"),
            ("model kept", md(s.get("selected_on", "?")))]
    lines = ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    lines += ["", f"Trained with `mixerlab train --recipe {md(cfg.get('recipe', '?'))}` and the model options above."]
    return lines


def _results(facts: dict[str, Any], names: list[str] | None) -> list[str]:
    final = facts.get("final")
    if not final:
        return ["No measured accuracy: the run has no `final_eval.json` (it did not finish)." if facts
                else "No measured accuracy: no evaluation came with this model."]
    lines = [f"Scored by the trainer on the {md(final.get('split', 'test'))} split "
             f"({final.get('count', '?'):,} images), on the model `{md(final.get('model', '?'))}`:", ""]
    lines += ["| metric | value |", "| --- | --- |"]
    lines += [f"| {md(label)} | {value:.2f}% |" for _, label, value in _metrics(facts)]
    per = final.get("per_class")
    if isinstance(per, list) and per:
        prec = final.get("precision_per_class") or [None] * len(per)
        lines += ["", "Per class (recall: the share of the class's images given its name; precision: the share "
                      "of the images given its name that are of it):", "", "| class | recall | precision |",
                  "| --- | --- | --- |"]
        for i, r in enumerate(per):
            name = md(names[i]) if names and i < len(names) else str(i)
            p = prec[i] if i < len(prec) else None
            lines.append(f"| {name} | {_pct(r)} | {_pct(p) if isinstance(p, (int, float)) else '-'} |")
    return lines


def model_card(model: nn.Module, config: dict[str, Any], source: str | os.PathLike | None, repo_id: str,
               license: str, note: dict[str, Any] | None) -> str:
    """The README.md text."""
    facts = run_facts(source)
    arch, c = config["architecture"], model.config
    title = clean(repo_id.split("/")[-1] if "/" in repo_id and not repo_id.startswith("local-dir:")
                  else (Path(str(source)).name if source else arch))
    names = getattr(model, "class_names", None)
    out = _front_matter(title, license, c.arch, facts)
    kind = "MLP-Mixer (Tolstikhin et al., 2021, arXiv 2105.01601)" if c.arch == "mixer" else "Vision Transformer"
    how = "trained and exported with mixerlab" if facts else "exported with mixerlab"
    out += [f"# {md(title)}", "", f"An image classifier: {kind}, {how}. It loads in timm and in transformers "
            "without mixerlab.", "", "## Model", ""] + _shape(model, arch)
    if note:
        out += ["", f"**Activation.** This model was trained with the tanh approximation of GELU (the official "
                f"Flax code's). timm's MlpMixer cannot be told to use it and builds the exact GELU, so timm and "
                f"transformers compute slightly different logits than mixerlab: measured on "
                f"{note['batch']}, the largest logit difference is {note['max_abs_logit_diff']:.3g} and the top "
                f"class agrees on {100 * note['top1_agreement']:.1f}% of them. `mixerlab.from_pretrained` "
                f"reads the folder with the tanh form."]
    out += ["", "## Training", ""] + _training(facts) + ["", "## Results", ""] + _results(facts, names)
    pre = config["pretrained_cfg"]
    out += ["", "## Preprocessing", "", f"Resize the shorter side to {c.img_size[0]} / crop_pct = "
            f"{int(c.img_size[0] / c.crop_pct)} pixels ({c.interpolation}), crop the centre {c.img_size[0]} x "
            f"{c.img_size[1]}, scale to [0, 1], then normalise by mean {pre['mean']} and std {pre['std']} "
            f"({c.in_chans} channel{'s' if c.in_chans > 1 else ''}). timm's `resolve_data_config` + "
            "`create_transform` build exactly this from `config.json`."]
    if c.in_chans != 3:
        out += ["", f"The model reads {c.in_chans}-channel images: transformers' pipeline converts every image to "
                "RGB first, so use timm (or mixerlab) for it."]
    load = repo_id if repo_id.startswith("local-dir:") else f"hf-hub:{repo_id}"
    path = repo_id[len("local-dir:"):] if repo_id.startswith("local-dir:") else repo_id
    out += ["", "## Use", "", "timm:", "", "```python", "import timm, torch", "from PIL import Image",
            f'model = timm.create_model("{load}", pretrained=True).eval()',
            "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
            'probs = model(transform(Image.open("image.png")).unsqueeze(0)).softmax(-1)', "```", "",
            "transformers:", "", "```python", "from transformers import pipeline",
            f'classify = pipeline("image-classification", model="{path}")',
            'print(classify("image.png"))', "```", "",
            "mixerlab:", "", "```python", "import mixerlab",
            f'model = mixerlab.from_pretrained("{path}")', "```", ""]
    return "\n".join(out)
