"""Evaluation: loss, top-1, top-5, per-class accuracy and the confusion matrix of a model on a split."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .data.transforms import prepare
from .errors import DataError
from .perf.runtime import autocast

log = logging.getLogger(__name__)


def check_classes(model: nn.Module, data_classes: list[str], src: str, data: str, by_index: bool = False) -> None:
    """Refuse to score a model on data whose classes are not the ones it was trained on: the same
    count is not enough, the names must agree (or `by_index` says that class i is class i)."""
    names = getattr(model, "class_names", None)
    if len(data_classes) != model.num_classes:
        detail = ""
        if names is not None:
            missing = [c for c in names if c not in data_classes]
            extra = [c for c in data_classes if c not in names]
            detail = (f": the model's {list(names)}, the data's {list(data_classes)}"
                      + (f"; not in the data: {missing}" if missing else "")
                      + (f"; not in the model: {extra}" if extra else ""))
        raise DataError(f"{src} has {model.num_classes} classes but {data} has {len(data_classes)}{detail}")
    if names is None:
        log.warning("%s carries no class names: class i of %s is scored as the model's class i", src, data)
    elif list(names) != list(data_classes) and not by_index:
        raise DataError(f"{src} was trained on classes {list(names)}, but {data} has {list(data_classes)}; "
                        f"scores would compare different things. Pass --map-by-index to score class i of the "
                        f"data as class i of the model on purpose")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split,
    num_classes: int,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    precision: str = "fp32",
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    tta: bool = False,
    hardest: int = 0,
) -> dict[str, Any]:
    """Loss, top-1/top-5 and the confusion matrix over `split` (in memory or streamed: anything with
    `eval_batches`). Under DDP each rank takes its part and the sums are all-reduced, so every rank
    returns the full result.

    `tta=True` averages the class probabilities of each image and its mirror image (horizontal flip),
    which is only meaningful for a model trained with flips. It costs a second forward pass.
    `hardest=N` also returns the N most confident mistakes (index in the split, true and predicted
    class, confidence), gathered from every rank, and their images as the model saw them (uint8) under
    "hardest_images", which the caller removes before writing the result as JSON."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top5 hits, count, unusable files
    mistakes: list[tuple[float, int, int, int, torch.Tensor]] = []  # (confidence, index, true, predicted, image)
    batches = split.eval_batches(model.config, batch_size, rank, world_size)
    if progress:
        batches = tqdm(batches, desc="eval", total=-(-len(split) // (batch_size * world_size)), leave=False)
    for b, images, labels, errors in batches:
        sums[3] += len(errors)
        if not len(labels):
            continue
        x = prepare(images, model, device)
        y = labels.to(device)
        with autocast(device, precision):
            logits = model(x).float()
            if tta:
                # Mean of the two views' probabilities, kept as log-probabilities so the loss below
                # is the cross-entropy of the averaged prediction.
                probs = (logits.softmax(-1) + model(x.flip(-1)).float().softmax(-1)) / 2
                logits = probs.clamp_min(1e-12).log()
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (logits.topk(min(5, num_classes), dim=1).indices == y[:, None]).any(dim=1).sum()
        sums[2] += len(b)
        pred = logits.argmax(1)
        cm += torch.bincount(y * num_classes + pred, minlength=num_classes**2).view_as(cm)
        if hardest:
            wrong = (pred != y).nonzero().flatten()
            conf = logits.softmax(-1).max(-1).values
            mistakes += [(conf[i].item(), b[i].item(), y[i].item(), pred[i].item(), images[i].clone())
                         for i in wrong.tolist()]
            mistakes = sorted(mistakes, key=_confidence_then_index)[:hardest]
    if world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(cm)
        dist.all_reduce(sums)
        if hardest:
            gathered: list = [None] * world_size
            dist.all_gather_object(gathered, mistakes)
            mistakes = sorted((m for part in gathered for m in part), key=_confidence_then_index)[:hardest]
    model.train(was_training)
    return _result(cm, sums, mistakes, tta)


def _result(cm: torch.Tensor, sums: torch.Tensor, mistakes: list, tta: bool) -> dict[str, Any]:
    n = max(sums[2].item(), 1)
    return {
        "loss": sums[0].item() / n,
        "top1": cm.diag().sum().item() / n,
        "top5": sums[1].item() / n,
        # accuracy of each true class, which is its recall
        "per_class": (cm.diag().double() / cm.sum(1).clamp(min=1).double()).tolist(),
        "precision_per_class": (cm.diag().double() / cm.sum(0).clamp(min=1).double()).tolist(),
        "hardest": [{"index": i, "true": t, "predicted": p, "confidence": round(c, 6)} for c, i, t, p, _ in mistakes],
        "hardest_images": [m[4] for m in mistakes],  # not JSON: callers take it out (`pop`) for the figure
        "confusion": cm.cpu().tolist(),
        "count": int(n),
        "tta": "flip" if tta else None,
        "unusable": int(sums[3].item()),  # files of a streamed split that could not be decoded
    }


def _confidence_then_index(m: tuple) -> tuple[float, int]:
    return -m[0], m[1]
