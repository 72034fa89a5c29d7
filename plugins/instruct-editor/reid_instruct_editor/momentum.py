"""Momentum (exponential moving average) copies, as ALBEF / RaSa and the Instruct-ReID
authors keep for their text encoder: theta_m <- m theta_m + (1 - m) theta (m = 0.995),
updated before each use, never by gradient.

`MomentumCopy` copies one module (a view gathering the live parts that are followed)
leaving out the submodules named in `skip` (the CLIP image tower beside the text tower):
the authors' `model_pairs` are their text encoder and text projection, no image side.
The copy is held outside the module tree of its owner (a loss): it is not a parameter (no
optimiser, no DDP gradient, no `requires_grad` toggling by stage patterns). Buffers
(BatchNorm running statistics) are copied from the live model at each update.

`MomentumState` (a mixin for losses) puts the copy in the loss's `state_dict` as its
extra state, so a checkpoint holds it and `--resume` continues the same average: the
trainer restores the losses' state before it binds them (core.pipeline.bind_losses), so
the state waits until `bind` builds the copy from the live weights, then overwrites it.
A checkpoint written before the copy was saved restores nothing: the copy restarts from
the live weights, as before.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import nn


class MomentumCopy:
    """`MomentumCopy(live, momentum, skip)`; `update()` moves the copy towards `live`;
    `copy(...)` (or calling this) runs the copy (no gradient; `live`'s train/eval mode)."""

    def __init__(self, live: nn.Module, momentum: float, skip: Iterable[nn.Module] = ()) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.live, self.momentum = live, float(momentum)
        memo: dict[int, Any] = {id(m): None for m in skip}  # skipped submodules become None in the copy
        self.copy = copy.deepcopy(live, memo).requires_grad_(False)
        for p in self.copy.parameters():
            p.grad = None

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

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.copy.state_dict().items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor], owner: str) -> None:
        own = self.copy.state_dict()
        if set(own) != set(state):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ValueError(f"{owner}: the checkpoint's momentum copy does not fit this model (missing "
                             f"{missing[:3]}, unexpected {extra[:3]}); resume with the configuration it was "
                             "trained with")
        for k, v in own.items():
            v.copy_(state[k])

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        # the copy's random draws (dropout) leave the global stream as it was
        with torch.random.fork_rng(devices=[]):
            return self.copy(*args, **kwargs)


class MomentumState:
    """Mixin for an nn.Module holding `self._momentum_model` (a MomentumCopy or None):
    saves it as the module's extra state, restores it when (or as soon as) it is bound.
    Call `_adopt_pending_momentum()` right after building the copy in `bind`."""

    _momentum_model: MomentumCopy | None = None
    _pending_momentum: dict[str, torch.Tensor] | None = None

    def get_extra_state(self) -> dict[str, Any]:
        if self._momentum_model is not None:
            return {"momentum_copy": self._momentum_model.state_dict()}
        return {"momentum_copy": self._pending_momentum}  # restored, not yet bound: kept as loaded

    def set_extra_state(self, state: Any) -> None:
        saved = state.get("momentum_copy") if isinstance(state, dict) else None
        self._pending_momentum = saved
        if saved is not None and self._momentum_model is not None:
            self._adopt_pending_momentum()

    def _adopt_pending_momentum(self) -> None:
        if self._pending_momentum is not None and self._momentum_model is not None:
            owner = getattr(self, "momentum_owner", type(self).__name__)
            self._momentum_model.load_state_dict(self._pending_momentum, owner)
            self._pending_momentum = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # checkpoints written before the copy was saved: no extra state, the copy restarts
        state_dict.setdefault(prefix + "_extra_state", {"momentum_copy": None})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]
