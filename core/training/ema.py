"""The exponential moving average of the trained weights (`trainer.ema: decay`).

torch's `AveragedModel` with `get_ema_multi_avg_fn(decay)` and `use_buffers=True`
(parameters and buffers averaged), whose update makes no host sync: torch's moves its step
count (a host tensor) to the device on every update, for an EMA function that ignores it,
and a blocking copy to a GPU waits for the stream (issue 19: no host sync per step). The
same update otherwise: W_0 = the model's weights, then W <- decay W + (1 - decay) W_model.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class ExponentialMovingAverage(AveragedModel):
    """`AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)`
    (same state dict), updated without reading or moving its step count on the device."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"trainer.ema: the decay must be in [0, 1], got {decay}")
        super().__init__(model, use_buffers=True)
        self.decay = decay

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if int(self.n_averaged) == 0:  # a host tensor (the trainer never moves it): no sync
            for averaged, current in zip(mine, theirs, strict=True):
                averaged.detach().copy_(current)
        else:
            groups: dict[tuple, tuple[list, list]] = defaultdict(lambda: ([], []))
            for averaged, current in zip(mine, theirs, strict=True):
                group = groups[(averaged.device, averaged.dtype)]
                group[0].append(averaged.detach())
                group[1].append(current)
            for (_, dtype), (averaged, current) in groups.items():
                if dtype.is_floating_point or dtype.is_complex:
                    torch._foreach_lerp_(averaged, current, 1 - self.decay)
                else:  # integer buffers (BatchNorm's counts) as torch's EMA function treats them
                    for a, c in zip(averaged, current):
                        a.copy_(a * self.decay + c * (1 - self.decay))
        self.n_averaged += 1
