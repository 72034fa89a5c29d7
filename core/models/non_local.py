"""Non-local block, Wang et al. 2018, "Non-local Neural Networks", Eq. 1 and 6 with the
dot-product pairwise function (Eq. 4, f = theta(x_i)^T phi(x_j), normalised by N, the
number of positions), as inserted into ResNet-50 by AGW (Ye et al. 2021, Sec. 4.1: two
blocks after res3's last two units, three after res4's last three).

z = W_z y + x, y_i = (1/N) sum_j f(x_i, x_j) g(x_j). W_z is a 1x1 conv followed by a
BatchNorm whose weight and bias start at zero, so a new block starts as the identity and
a pretrained network's behaviour is kept at initialisation (Sec. 4.1 of Wang et al.).

`inter`: the embedding width of theta, phi and g; by default C / `reduction` (C/2, Wang et
al. Sec. 3.3). The AGW authors' code (ReID-Survey) and fast-reid set it to
`reduc_ratio // reduc_ratio`, i.e. 1 channel, and their published numbers come from that
block: the AGW and SBS pipelines ask for it (`non_local_width: 1`).
"""

from __future__ import annotations

import torch
from torch import nn


class NonLocalBlock(nn.Module):
    def __init__(self, channels: int, reduction: int = 2, inter: int | None = None) -> None:
        super().__init__()
        inter = max(channels // reduction, 1) if inter is None else int(inter)
        self.g = nn.Conv2d(channels, inter, 1)
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.W = nn.Sequential(nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        g = self.g(x).flatten(2).transpose(1, 2)          # (B, N, C')
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C')
        phi = self.phi(x).flatten(2)                      # (B, C', N)
        f = theta @ phi / (h * w)                         # Eq. 4 over N = H*W
        y = (f @ g).transpose(1, 2).reshape(b, -1, h, w)
        return self.W(y) + x
