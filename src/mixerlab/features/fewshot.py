"""The paper's few-shot linear evaluation, computed as big_vision's `evaluators/fewshot_lsr.py` does.

Per seed, one `numpy.random.default_rng(seed)` permutes each class's training indices in class order;
the k-shot set is the first k of each (all of a class's images when it has fewer: no error, as big_vision
does), so the subsets for growing k are nested. Features are standardised by the subset's own mean and
population std (+1e-5), a constant feature of 100 is appended (an almost unpenalised bias), the targets
are +-1, and the ridge regression (lambda = l2_reg, not scaled by N) is solved through one
eigendecomposition, in the primal form when N >= D + 1 and in the dual form otherwise. The prediction is
the argmax of the scores (the first on ties). All in float32, as big_vision runs it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import MixerlabError

log = logging.getLogger(__name__)

BIAS = 100.0
DEFAULT_SHOTS = (1, 5, 10, 25)


class FewshotError(MixerlabError):
    """Features, labels or settings the evaluation cannot use."""


def subsets(labels: np.ndarray, num_classes: int, shots: tuple[int, ...], seed: int) -> dict[int, np.ndarray]:
    """The training rows of each k-shot set for one seed, class-major, as big_vision draws them."""
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    return {k: np.concatenate([p[:k] for p in perms]).astype(np.int64) for k in shots}


def ridge_scores(x: np.ndarray, y: np.ndarray, test: np.ndarray, num_classes: int, l2_reg: float) -> np.ndarray:
    """X_test . W of the closed-form ridge regression on standardised features with the bias column."""
    x = x.astype(np.float32)
    mean, std = x.mean(0), x.std(0) + np.float32(1e-5)

    def prep(f: np.ndarray) -> np.ndarray:
        f = (f.astype(np.float32) - mean) / std
        return np.concatenate([f, np.full((len(f), 1), BIAS, np.float32)], axis=1)

    xt, xq = prep(x), prep(test)
    targets = (2 * np.eye(num_classes, dtype=np.float32)[y] - 1).astype(np.float32)
    lam = np.float32(l2_reg)
    if len(xt) >= xt.shape[1]:  # primal: (X'X + lam I)^-1 X'Y
        e, q = np.linalg.eigh(xt.T @ xt)
        w = (q * (1 / (e + lam))) @ (q.T @ (xt.T @ targets))
    else:  # dual: X' (XX' + lam I)^-1 Y
        e, q = np.linalg.eigh(xt @ xt.T)
        w = ((xt.T @ q) * (1 / (e + lam))) @ (q.T @ targets)
    return xq @ w.astype(np.float32)


def check_features(name: str, features: Any, labels: Any, num_classes: int | None = None) -> tuple:
    """(float32 features N x D, int64 labels N) or one message naming what is wrong."""
    f = np.asarray(features)
    lab = np.asarray(labels)
    if f.ndim != 2 or len(f) == 0:
        raise FewshotError(f"{name} features: expected a non-empty N x D array, got shape {tuple(f.shape)}")
    if lab.shape != (len(f),):
        raise FewshotError(f"{name} labels: expected {len(f)} labels (one per row), got shape {tuple(lab.shape)}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise FewshotError(f"{name} labels: expected integers, got {lab.dtype}")
    if not np.isfinite(f).all():
        bad = np.flatnonzero(~np.isfinite(f).all(1))
        raise FewshotError(f"{name} features: {len(bad)} row(s) hold NaN or infinity (the first: row {bad[0]})")
    if lab.min() < 0 or (num_classes is not None and lab.max() >= num_classes):
        raise FewshotError(f"{name} labels: values must be in [0, {num_classes}), found {lab.min()}..{lab.max()}")
    return f.astype(np.float32), lab.astype(np.int64)


def fewshot(train_features, train_labels, test_features, test_labels, shots=DEFAULT_SHOTS, seeds: int = 3,
            l2_reg: float = 1024.0, num_classes: int | None = None, details: bool = False) -> dict[str, Any]:
    """Few-shot linear accuracy for each k in `shots` over seeds 0..`seeds`-1:
    {"shots": {"5": {"accuracy": [per seed], "mean": m, "std": s}, ...}, ...}. `details=True` adds
    each run's training rows, scores and predictions (what the reference tests compare)."""
    shots = tuple(int(k) for k in shots)
    if not shots or min(shots) < 1:
        raise FewshotError(f"shots must be at least 1 each, got {list(shots)}")
    if int(seeds) < 1:
        raise FewshotError(f"seeds must be at least 1, got {seeds}")
    xtr, ytr = check_features("training", train_features, train_labels, num_classes)
    xte, yte = check_features("test", test_features, test_labels, num_classes)
    if xtr.shape[1] != xte.shape[1]:
        raise FewshotError(f"training features have {xtr.shape[1]} dimensions, test features {xte.shape[1]}")
    if not l2_reg > 0:
        raise FewshotError(f"l2_reg must be above 0, got {l2_reg}")
    c = int(num_classes if num_classes is not None else max(ytr.max(), yte.max()) + 1)
    counts = np.bincount(ytr, minlength=c)
    if (counts == 0).any():
        log.warning("few-shot: class(es) %s have no training images: never predicted (as in big_vision)",
                    np.flatnonzero(counts == 0).tolist())
    if max(shots) > counts[counts > 0].min():
        log.info("few-shot: classes with fewer training images than k give all they have (the smallest has %d)",
                 int(counts[counts > 0].min()))
    out: dict[str, Any] = {"shots": {}, "seeds": int(seeds), "l2_reg": float(l2_reg), "num_classes": c,
                           "train_images": len(ytr), "test_images": len(yte)}
    runs = {k: [] for k in shots}
    for seed in range(int(seeds)):
        for k, rows in subsets(ytr, c, shots, seed).items():
            scores = ridge_scores(xtr[rows], ytr[rows], xte, c, l2_reg)
            pred = scores.argmax(1)
            runs[k].append({"seed": seed, "rows": rows, "scores": scores, "pred": pred,
                            "correct": int((pred == yte).sum())})
    for k in shots:
        acc = [r["correct"] / len(yte) for r in runs[k]]
        entry = {"accuracy": acc, "mean": float(np.mean(acc)), "std": float(np.std(acc)),
                 "train_images": [len(r["rows"]) for r in runs[k]]}
        if details:
            entry["runs"] = runs[k]
        out["shots"][str(k)] = entry
    return out
