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

**One momentum text tower.** `t2i_contrastive` and `t2i_matching` both follow the CLIP
text tower (`backbone.instruction`, its image tower left out). Its copy is one module
(`SharedCopy`), found by the live module it follows: the first MomentumCopy built over it
makes it and owns it (saves it in its state, under the same `encoder.*` keys as before);
every later one (the other loss, and the losses of other stages) uses that object and
saves only its own parts. The authors keep one momentum model (ALBEF's `text_encoder_m`,
updated once per forward of their text-to-image model). So the shared copy takes one EMA
step per training forward however many losses use it: `update(batch)` by a second user in
the same forward (the same batch object, the live weights unchanged since) moves nothing;
a new batch, or the same batch after an optimiser step, takes a step. Both losses must
share one momentum (an error otherwise). A checkpoint written when each loss kept its own
copy loads: the owner's tower is the one kept.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any, Iterable

import torch
from torch import nn


def _ema(pairs: list[tuple[torch.Tensor, torch.Tensor]], momentum: float) -> None:
    """theta_m <- m theta_m + (1 - m) theta for each (copy, live) pair."""
    for p_m, p in pairs:
        p_m.mul_(momentum).add_(p.detach().to(p_m.dtype), alpha=1.0 - momentum)


def _stamp(params: list[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    """Where and at which in-place version the live weights are: an optimiser step changes it."""
    return tuple((p.data_ptr(), p._version) for p in params)


class SharedCopy:
    """The momentum copy of one live module that several MomentumCopy use (the CLIP text
    tower both text-to-image losses follow): one module, one EMA step per training forward
    whichever user asks first (module docstring); saved by its `owner` (a MomentumCopy)."""

    def __init__(self, live: nn.Module, momentum: float, skip: Iterable[nn.Module], owner: "MomentumCopy",
                 name: str) -> None:
        # the live module is the key of _SHARED: held weakly, or the entry would never go
        self._live, self.momentum, self.name = weakref.ref(live), float(momentum), name
        self.copy = copy.deepcopy(live, {id(m): None for m in skip}).requires_grad_(False)
        self._owner = weakref.ref(owner)
        live_params = dict(live.named_parameters())
        self._pairs = [(p_m, live_params[n]) for n, p_m in self.copy.named_parameters()]
        live_buffers = dict(live.named_buffers())
        self._buffers = [(b_m, live_buffers[n]) for n, b_m in self.copy.named_buffers()]
        self._stamp: tuple | None = None
        self._batch: Any = lambda: None  # a weak reference to the batch of the last step

    @property
    def owner(self) -> "MomentumCopy | None":
        return self._owner()

    def claim(self, owner: "MomentumCopy", name: str) -> None:
        """`owner` saves it from now on (its former owner is gone)."""
        self._owner, self.name = weakref.ref(owner), name

    @torch.no_grad()
    def update(self, batch: Any = None) -> None:
        """One EMA step, unless this forward's step was taken: `batch` is the one of the last
        step and the live weights have not changed since. `batch=None`: always a step."""
        stamp = _stamp([p for _, p in self._pairs])
        if batch is None or self._batch() is not batch or stamp != self._stamp:
            _ema(self._pairs, self.momentum)
        self._stamp = stamp
        self._batch = weakref.ref(batch) if batch is not None else (lambda: None)
        for b_m, b in self._buffers:
            b_m.copy_(b)
        live = self._live()
        self.copy.train(live.training if live is not None else self.copy.training)


#: live module -> the SharedCopy following it (weak: gone with the model)
_SHARED: "weakref.WeakKeyDictionary[nn.Module, SharedCopy]" = weakref.WeakKeyDictionary()


class MomentumCopy:
    """`MomentumCopy(live, momentum, skip, shared, name)`; `update()` moves the copy towards
    `live`; `copy(...)` (or calling this) runs the copy (no gradient; `live`'s train/eval
    mode). `shared`: names of `live`'s submodules whose copy is one `SharedCopy` for every
    MomentumCopy following the same live submodule (module docstring); `name` names the
    user in messages. `update(batch)`: one EMA step of its own parts, and of the shared
    ones unless another user took it in this forward (SharedCopy.update)."""

    def __init__(self, live: nn.Module, momentum: float, skip: Iterable[nn.Module] = (),
                 shared: Iterable[str] = (), name: str = "momentum copy") -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1), got {momentum}")
        self.live, self.momentum, self.name = live, float(momentum), name
        skip = list(skip)
        memo: dict[int, Any] = {id(m): None for m in skip}  # skipped submodules become None in the copy
        self.shared: dict[str, SharedCopy] = {}
        for attr in shared:
            part = getattr(live, attr)
            tower = _SHARED.get(part)
            if tower is None:
                tower = _SHARED[part] = SharedCopy(part, momentum, skip, self, name)
            elif tower.owner is None:
                tower.claim(self, name)
            if tower.momentum != self.momentum:
                raise ValueError(f"{name}: momentum {self.momentum} differs from {tower.momentum} of {tower.name}, "
                                 f"whose momentum copy of `{attr}` it shares (one momentum model, as the authors "
                                 "keep); set both to the same momentum")
            self.shared[attr] = tower
            memo[id(part)] = tower.copy  # the copy's `attr` is the shared module itself
        self.copy = copy.deepcopy(live, memo).requires_grad_(False)
        for p in self.copy.parameters():
            p.grad = None
        live_params, live_buffers = dict(live.named_parameters()), dict(live.named_buffers())
        self._pairs = [(p_m, live_params[n]) for n, p_m in self.copy.named_parameters() if not self._is_shared(n)]
        self._buffers = [(b_m, live_buffers[n]) for n, b_m in self.copy.named_buffers() if not self._is_shared(n)]

    def _is_shared(self, key: str) -> bool:
        return any(key.startswith(attr + ".") for attr in self.shared)

    def _saves(self, key: str) -> bool:
        """Whether this copy's state holds `key`: its own parts, and the shared ones it owns."""
        return not any(key.startswith(a + ".") and t.owner is not self for a, t in self.shared.items())

    @torch.no_grad()
    def update(self, batch: Any = None) -> None:
        """theta_m <- m theta_m + (1 - m) theta for every parameter (the shared parts once
        per forward for all their users: `batch`, SharedCopy.update); buffers copied."""
        for tower in self.shared.values():
            tower.update(batch)
        _ema(self._pairs, self.momentum)
        for b_m, b in self._buffers:
            b_m.copy_(b)
        self.copy.train(self.live.training)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.copy.state_dict().items() if self._saves(k)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor], owner: str) -> None:
        own = {k: v for k, v in self.copy.state_dict().items() if self._saves(k)}
        # a checkpoint of when each loss kept its own tower: the owner's is the one kept
        state = {k: v for k, v in state.items() if self._saves(k)}
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
