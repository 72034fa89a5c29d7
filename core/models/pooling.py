"""Spatial poolings of a CNN feature map (B, C, H, W) -> (B, C), chosen by name.

- `avg` / `max`: global average / max pooling.
- `gem`: generalized-mean pooling, Radenovic et al. 2019, "Fine-tuning CNN Image Retrieval
  with No Human Annotation", Sec. 3.1: f_c = (1/|X_c| sum_x x^p)^(1/p), p = 3 as in AGW
  (Ye et al. 2021, Sec. 4.1) and fast-reid's SBS; p is learnable unless `learn_p: false`.
  p = 1 is average pooling, p -> inf approaches max pooling.
- `attention`: attention-based pooling, Ilse et al. 2018, "Attention-based Deep Multiple
  Instance Learning", Sec. 2.4: a_k = softmax_k(w^T tanh(V h_k)), f = sum_k a_k h_k over
  the H*W positions, so the network learns which positions to keep (occlusion, background).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

POOLINGS = ("avg", "max", "gem", "attention")


class GeneralizedMeanPooling(nn.Module):
    """GeM of Radenovic et al. 2019; inputs are clamped at `eps` first (the mean of
    powers needs non-negative values; post-ReLU maps are, up to rounding)."""

    def __init__(self, p: float = 3.0, learn_p: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"pooling 'gem': p must be > 0, got {p}")
        value = torch.tensor(float(p))
        self.p = nn.Parameter(value) if learn_p else nn.Parameter(value, requires_grad=False)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.to(x.dtype)
        return x.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class AttentionPooling(nn.Module):
    """The attention pooling of Ilse et al. 2018 over the spatial positions of a feature map: weights
    a = softmax(w^T tanh(V h)), output sum_k a_k h_k (B, C). `hidden` is the width of V."""

    def __init__(self, channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.V = nn.Linear(channels, hidden)
        self.w = nn.Linear(hidden, 1, bias=False)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H*W) attention weights, summing to 1 per image."""
        h = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        return torch.softmax(self.w(torch.tanh(self.V(h))).squeeze(-1), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.weights(x)
        return torch.einsum("bk,bck->bc", a, x.flatten(2))


class _Reduce(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if self.how == "avg" else x.amax(dim=(2, 3))


def build_pooling(spec: str | dict[str, Any], channels: int, owner: str) -> nn.Module:
    """`spec`: a name (`gem`) or a mapping with `name` and the pooling's keys
    (`{name: gem, p: 3, learn_p: true}`, `{name: attention, hidden: 128}`)."""
    params = dict(spec) if isinstance(spec, dict) else {"name": spec}
    name = params.pop("name", None)
    if name not in POOLINGS:
        raise ValueError(f"{owner}: pooling must be one of {', '.join(POOLINGS)} (or a mapping with "
                         f"`name`), got {spec!r}")
    try:
        if name in ("avg", "max"):
            if params:
                raise TypeError(f"unexpected keys {sorted(params)}")
            return _Reduce(name)
        if name == "gem":
            return GeneralizedMeanPooling(**params)
        return AttentionPooling(channels, **params)
    except TypeError as exc:
        valid = {"gem": "p, learn_p, eps", "attention": "hidden"}.get(name, "none")
        raise ValueError(f"{owner}: pooling '{name}': {exc}; valid keys: {valid}") from None
