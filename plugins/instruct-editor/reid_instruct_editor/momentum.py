"""A momentum (exponential moving average) copy of a model, as ALBEF / RaSa and the
Instruct-ReID authors keep for their text encoder: theta_m <- m theta_m + (1 - m) theta
(m = 0.995), updated before each use, never by gradient.

The copy is held outside the module tree of its owner (a loss): it is not a parameter
(no optimiser, no DDP gradient, no `requires_grad` toggling by stage patterns) and not in
checkpoints (a resumed run restarts it from the live weights). Buffers (BatchNorm
running statistics) are copied from the live model at each update.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class MomentumCopy:
    """`MomentumCopy(model, momentum)`; `update()` moves the copy towards the live
    model; `copy(...)` runs the copy (no gradient; the live model's train/eval mode)."""

    def __init__(self, model: nn.Module, momentum: float) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.live, self.momentum = model, float(momentum)
        self.copy = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        """theta_m <- m theta_m + (1 - m) theta for every parameter; buffers copied."""
        live = dict(self.live.named_parameters())
        for name, p_m in self.copy.named_parameters():
            p_m.mul_(self.momentum).add_(live[name].detach().to(p_m.dtype), alpha=1.0 - self.momentum)
        buffers = dict(self.live.named_buffers())
        for name, b_m in self.copy.named_buffers():
            b_m.copy_(buffers[name])
        self.copy.train(self.live.training)

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        # the copy's random draws (dropout, a phrasing per row) leave the global stream as it was
        with torch.random.fork_rng(devices=[]):
            return self.copy(*args, **kwargs)
