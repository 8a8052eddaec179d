"""Prediction on image files: the top-k classes of each file, one file's failure never the others'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .data.datasets import IMAGE_EXTS
from .data.transforms import prepare
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


@torch.no_grad()
def predict_files(model: nn.Module, files: list[Path], topk: int = 5, device: str = "cpu",
                  class_names: list[str] | None = None) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file; unreadable files get an "error"."""
    from PIL import Image, UnidentifiedImageError

    cfg = model.config
    model.eval().to(device)
    names = class_names or [str(i) for i in range(cfg.num_classes)]
    results = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("L" if cfg.in_chans == 1 else "RGB").resize(
                    (cfg.img_size[1], cfg.img_size[0]), Image.BILINEAR)
                t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        except (OSError, UnidentifiedImageError) as e:
            results.append({"file": str(f), "error": f"unreadable image: {e}"})
            continue
        x = t.view(cfg.img_size[0], cfg.img_size[1], -1).permute(2, 0, 1).unsqueeze(0)
        probs = model(prepare(x, model, torch.device(device))).float().softmax(-1)[0]
        p, i = probs.topk(min(topk, probs.numel()))
        results.append({"file": str(f), "top": [
            {"class": names[j] if j < len(names) else str(j), "index": j, "prob": round(float(q), 6)}
            for q, j in zip(p.tolist(), i.tolist())
        ]})
    return results
