"""A linear probe on frozen features: multinomial logistic regression fitted by L-BFGS on the whole
(cached) training set, its L2 penalty chosen on a held-out fifth of the training features, then refitted
on all of them and scored once on the test features."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .fewshot import FewshotError, check_features

DEFAULT_L2 = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1)


def _fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, steps: int) -> torch.nn.Linear:
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], num_classes, dtype=torch.float64)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + l2 * head.weight.square().sum() / 2
        loss.backward()
        return loss

    opt.step(closure)
    return head


def linear_probe(train_features, train_labels, test_features, test_labels, l2_grid=DEFAULT_L2,
                 num_classes: int | None = None, steps: int = 200, seed: int = 0) -> dict[str, Any]:
    """{"top1": test accuracy, "l2": the chosen penalty, "val_top1": {penalty: accuracy}, ...}."""
    xtr, ytr = check_features("training", train_features, train_labels, num_classes)
    xte, yte = check_features("test", test_features, test_labels, num_classes)
    if len(ytr) < 5:
        raise FewshotError(f"a linear probe needs at least 5 training images to hold some out, got {len(ytr)}")
    c = int(num_classes if num_classes is not None else max(ytr.max(), yte.max()) + 1)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-5  # standardised by the training features' statistics

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((a - mean) / std).double()

    order = np.random.default_rng(seed).permutation(len(ytr))
    held, kept = order[: len(ytr) // 5], order[len(ytr) // 5:]
    val = {}
    for l2 in l2_grid:
        head = _fit(t(xtr[kept]), torch.from_numpy(ytr[kept]), c, float(l2), steps)
        with torch.no_grad():
            val[float(l2)] = float((head(t(xtr[held])).argmax(1).numpy() == ytr[held]).mean())
    best = max(val, key=lambda k: (val[k], k))  # ties: the stronger penalty
    head = _fit(t(xtr), torch.from_numpy(ytr), c, best, steps)
    with torch.no_grad():
        pred = head(t(xte)).argmax(1).numpy()
    return {"top1": float((pred == yte).mean()), "l2": best, "val_top1": {str(k): v for k, v in val.items()},
            "train_images": len(ytr), "test_images": len(yte), "num_classes": c}
