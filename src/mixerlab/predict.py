"""Prediction on image files: the top-k classes of each file, one file's failure never the others'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .data.datasets import IMAGE_EXTS
from .data.decode import DecodeError
from .data.transforms import image_for_model, prepare
from .errors import DataError


def list_image_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    if not files:
        raise DataError(f"no image files in {', '.join(paths)}")
    return files


def class_names_of(model: nn.Module) -> list[str]:
    """The names a model carries, else its class indices as strings."""
    return getattr(model, "class_names", None) or [str(i) for i in range(model.config.num_classes)]


@torch.inference_mode()
def probabilities(model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Class probabilities (B, classes) of a uint8 batch, with the model's own normalisation."""
    return model(prepare(images, model, torch.device(device))).float().softmax(-1)


def top_classes(probs: torch.Tensor, k: int, names: list[str]) -> list[dict[str, Any]]:
    """The k most probable classes of one probability vector, with names and indices."""
    p, i = probs.topk(min(k, probs.numel()))
    return [{"class": names[j] if j < len(names) else str(j), "index": j, "prob": round(float(q), 6)}
            for q, j in zip(p.tolist(), i.tolist())]


@torch.no_grad()
def predict_files(model: nn.Module, files: list[Path], topk: int = 5, device: str = "cpu",
                  class_names: list[str] | None = None) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file. A file that cannot be used gets an
    "error" naming the reason (decode.py), and the other files are still classified."""
    if topk < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")
    cfg = model.config
    model.eval().to(device)
    names = class_names or class_names_of(model)
    results = []
    for f in files:
        try:
            x = image_for_model(f, cfg).unsqueeze(0)
        except DecodeError as e:
            results.append({"file": str(f), "error": f"unreadable image: {e.explanation}", "reason": e.reason})
            continue
        probs = probabilities(model, x, device)[0]
        results.append({"file": str(f), "top": top_classes(probs, topk, names)})
    return results
