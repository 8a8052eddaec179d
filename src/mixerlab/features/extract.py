"""The pre-logit features of every image of a split (the pooled, normalised tokens the head reads),
with the model's own preprocessing, computed once and kept as float32 numpy arrays."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ..data.transforms import prepare
from ..perf.runtime import autocast


def pre_logits(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The features the head reads, of a uint8 batch, after the model's own preprocessing."""
    return model.forward_head(model.forward_features(prepare(images, model, device)), pre_logits=True)


@torch.no_grad()
def extract_features(model: nn.Module, split, device: torch.device | str = "cpu", batch_size: int = 256,
                     precision: str = "fp32", progress: bool = False, desc: str = "features"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(features N x D float32, labels N int64) of `split` (in memory or streamed); images that could
    not be decoded are left out, as evaluation leaves them out."""
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    feats, labels = [], []
    batches = split.eval_batches(model.config, batch_size)
    if progress:
        batches = tqdm(batches, desc=desc, total=-(-len(split) // batch_size), leave=False)
    for _, images, y, _ in batches:
        if len(images) == 0:
            continue
        with autocast(device, precision):
            f = pre_logits(model, images, device)
        feats.append(f.float().cpu().numpy())
        labels.append(np.asarray(y, dtype=np.int64))
    model.train(was_training)
    if not feats:
        return np.zeros((0, model.num_features), np.float32), np.zeros(0, np.int64)
    return np.concatenate(feats), np.concatenate(labels)
