"""DINO's weighted k-nearest-neighbour evaluation of features (Caron et al. 2021, eval_knn.py):
L2-normalised features, cosine similarity, the k most similar training images vote for their class
with weight exp(similarity / T), T = 0.07; top-1 and top-5 of the summed votes."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .fewshot import FewshotError, check_features

DEFAULT_K = (10, 20, 100, 200)


def knn(train_features, train_labels, test_features, test_labels, ks=DEFAULT_K, temperature: float = 0.07,
        num_classes: int | None = None, chunk: int = 1024) -> dict[str, Any]:
    """{"k": {"20": {"top1": a, "top5": b}, ...}}, the test images scored `chunk` at a time (the
    similarity matrix is never whole in memory)."""
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise FewshotError(f"k must be at least 1 each, got {list(ks)}")
    if not temperature > 0:
        raise FewshotError(f"temperature must be above 0, got {temperature}")
    xtr, ytr = check_features("training", train_features, train_labels, num_classes)
    xte, yte = check_features("test", test_features, test_labels, num_classes)
    if xtr.shape[1] != xte.shape[1]:
        raise FewshotError(f"training features have {xtr.shape[1]} dimensions, test features {xte.shape[1]}")
    c = int(num_classes if num_classes is not None else max(ytr.max(), yte.max()) + 1)
    train = torch.nn.functional.normalize(torch.from_numpy(xtr), dim=1)
    test = torch.nn.functional.normalize(torch.from_numpy(xte), dim=1)
    labels, truth = torch.from_numpy(ytr), torch.from_numpy(yte)
    hits = {k: [0, 0] for k in ks}
    kmax = min(max(ks), len(ytr))
    for start in range(0, len(test), chunk):
        sim, idx = (test[start:start + chunk] @ train.T).topk(kmax, dim=1)  # sorted, most similar first
        y = truth[start:start + chunk]
        for k in ks:
            kk = min(k, kmax)
            votes = torch.zeros(len(y), c).scatter_add_(1, labels[idx[:, :kk]], (sim[:, :kk] / temperature).exp())
            order = votes.argsort(dim=1, descending=True, stable=True)
            hits[k][0] += int((order[:, 0] == y).sum())
            hits[k][1] += int((order[:, :min(5, c)] == y[:, None]).any(1).sum())
    n = len(yte)
    return {"k": {str(k): {"top1": h[0] / n, "top5": h[1] / n} for k, h in hits.items()},
            "temperature": temperature, "train_images": len(ytr), "test_images": n, "num_classes": c}


def knn_reference(train_features, train_labels, test_features, test_labels, k: int, temperature: float = 0.07,
                  num_classes: int | None = None) -> tuple[float, float]:
    """The same vote by brute force in float64 numpy, one test image at a time (for tests)."""
    xtr = np.asarray(train_features, np.float64)
    xte = np.asarray(test_features, np.float64)
    xtr /= np.linalg.norm(xtr, axis=1, keepdims=True)
    xte /= np.linalg.norm(xte, axis=1, keepdims=True)
    c = num_classes or int(max(np.max(train_labels), np.max(test_labels)) + 1)
    top1 = top5 = 0
    for q, y in zip(xte, test_labels):
        sims = xtr @ q
        near = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(c)
        for i in near:
            votes[train_labels[i]] += np.exp(sims[i] / temperature)
        ranked = np.argsort(-votes, kind="stable")
        top1 += ranked[0] == y
        top5 += y in ranked[:5]
    return top1 / len(test_labels), top5 / len(test_labels)
