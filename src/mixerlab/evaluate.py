"""Evaluation (top-1, top-5, per-class accuracy, confusion matrix) and prediction on image files."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data.datasets import IMAGE_EXTS, Split
from .data.transforms import normalize
from .errors import DataError


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def prepare(x: torch.Tensor, model: nn.Module, device: torch.device) -> torch.Tensor:
    """uint8 batch -> normalised float on the device, with grey images repeated for RGB models."""
    x = normalize(x.to(device, non_blocking=True))
    want = model.config.in_chans
    if x.shape[1] != want:
        if x.shape[1] == 1:
            x = x.expand(-1, want, -1, -1)
        elif want == 1 and x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise DataError(f"the data has {x.shape[1]} channels, the model takes {want}")
    size = tuple(model.config.img_size)
    if tuple(x.shape[-2:]) != size:  # e.g. 28 px data into a 224 px pre-trained model
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    num_classes: int,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    precision: str = "fp32",
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    tta: bool = False,
) -> dict[str, Any]:
    """Loss, top-1/top-5 and the confusion matrix over `split`. Under DDP each rank takes every
    world_size-th image and the sums are all-reduced, so every rank returns the full result.

    `tta=True` averages the class probabilities of each image and its mirror image (horizontal flip),
    which is only meaningful for a model trained with flips. It costs a second forward pass."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    idx = torch.arange(rank, len(split), world_size)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top5 hits, count
    batches = idx.split(batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="eval", leave=False)
    for b in batches:
        x = prepare(split.images[b], model, device)
        y = split.labels[b].to(device)
        with autocast(device, precision):
            logits = model(x).float()
            if tta:
                # Mean of the two views' probabilities, kept as log-probabilities so the loss below
                # is the cross-entropy of the averaged prediction.
                probs = (logits.softmax(-1) + model(x.flip(-1)).float().softmax(-1)) / 2
                logits = probs.clamp_min(1e-12).log()
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        k = min(5, num_classes)
        sums[1] += (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum()
        sums[2] += len(b)
        cm += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2).view_as(cm)
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(cm)
        dist.all_reduce(sums)
    model.train(was_training)
    n = max(sums[2].item(), 1)
    per_class = (cm.diag().double() / cm.sum(1).clamp(min=1).double()).tolist()
    return {
        "loss": sums[0].item() / n,
        "top1": cm.diag().sum().item() / n,
        "top5": sums[1].item() / n,
        "per_class": per_class,
        "confusion": cm.cpu().tolist(),
        "count": int(n),
        "tta": "flip" if tta else None,
    }


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


def format_percent(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}%"
