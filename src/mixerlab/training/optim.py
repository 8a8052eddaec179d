"""Optimisers: AdamW and SGD (the paper's two recipes), and Muon for the hidden matrices.

Muon (Jordan et al. 2024, `torch.optim.Muon` since torch 2.9) orthogonalises the momentum of each
weight matrix before the update; `muon.BatchedMuon` is torch's, with the matrices of one shape
orthogonalised together. It only applies to the matrices inside the network: the patch stem,
the head, and every bias and norm scale are left to AdamW, as its authors prescribe. `MuonAdamW`
runs the two as one optimiser, so the LR scheduler, gradient clipping, GradScaler and checkpoints
see a single object.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import MixerlabError
from . import distributed as dist_utils


def make_fused(cls: type[torch.optim.Optimizer], params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """`cls` with its fused kernel where this torch has one for the parameters' device, else plain.

    The fused kernels update every tensor in one pass instead of a dozen small ops per tensor, a
    visible share of a small model's step. CUDA has them since torch 2.0, CPUs since 2.4; older
    versions refuse fused=True at construction, and then the plain loop is used."""
    params = list(params)  # a generator would be spent by the first attempt
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, **kwargs)


def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """A 2-D weight inside the body: what Muon is for. The stem is a 4-D conv kernel, the head is
    the classifier (its gradient has a different geometry), and 1-D tensors are biases and norms."""
    return p.ndim == 2 and not name.startswith(("head.", "stem."))


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the hidden matrices, AdamW for the rest, behind one Optimizer.

    The parameter groups are the two inner optimisers' own group dicts, so a scheduler that sets
    `group["lr"]` steers both. Muon's step is scaled with `adjust_lr_fn="match_rms_adamw"`
    (Liu et al. 2025), which makes its update as large as AdamW's: one lr and one weight decay serve
    both halves."""

    def __init__(self, muon_params: list[torch.Tensor], adamw_groups: list[dict[str, Any]], lr: float,
                 weight_decay: float, betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.95):
        if not hasattr(torch.optim, "Muon"):
            raise MixerlabError(f"optimizer 'muon' needs torch >= 2.9 (torch.optim.Muon); this is torch "
                               f"{torch.__version__}. Use --optimizer adamw.")
        from .muon import BatchedMuon  # subclasses torch.optim.Muon: importable from torch 2.9 only

        kw = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, adjust_lr_fn="match_rms_adamw")
        if dist_utils.active():
            # Every process would orthogonalise every matrix; under DDP each one takes its share and
            # broadcasts the result (ZeRO-1), one bucket per process, which measured faster than one
            # broadcast per parameter (docs/results.md).
            from torch.distributed.optim import ZeroRedundancyOptimizer

            self.muon = ZeroRedundancyOptimizer(muon_params, optimizer_class=BatchedMuon,
                                                parameters_as_bucket_view=True, **kw)
        else:
            self.muon = BatchedMuon(muon_params, **kw)
        self.adamw = make_fused(torch.optim.AdamW, adamw_groups, lr=lr, betas=betas)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, defaults={"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Under DDP, gather the sharded Muon state on rank `to`; every rank must call it before
        that rank calls `state_dict()` (ZeroRedundancyOptimizer's contract). A no-op otherwise."""
        if hasattr(self.muon, "consolidate_state_dict"):
            self.muon.consolidate_state_dict(to=to)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError(f"not a MuonAdamW state (keys {sorted(state_dict)}): was the run trained "
                             "with another --optimizer?")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        # Loading replaces the inner optimisers' group dicts: share the new ones, or the scheduler
        # would set the lr of dicts nobody reads.
        self.param_groups = self.muon.param_groups + self.adamw.param_groups


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.9) -> torch.optim.Optimizer:
    """'adamw', 'sgd' or 'muon', with no weight decay on biases and norms (1-D tensors), as timm and
    big_vision do."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = [p for _, p in named if p.ndim <= 1]
    if name == "muon":
        hidden = [p for n, p in named if is_hidden_matrix(n, p)]
        other = [p for n, p in named if p.ndim > 1 and not is_hidden_matrix(n, p)]
        groups = [{"params": other, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return MuonAdamW(hidden, groups, lr=lr, weight_decay=weight_decay, betas=betas)
    decay = [p for _, p in named if p.ndim > 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "adamw":
        return make_fused(torch.optim.AdamW, groups, lr=lr, betas=tuple(betas))
    if name == "sgd":
        return make_fused(torch.optim.SGD, groups, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; choose adamw, sgd or muon")
