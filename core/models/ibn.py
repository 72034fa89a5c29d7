"""IBN-a: instance and batch normalisation in one layer, Pan et al. 2018, "Two at Once:
Enhancing Learning and Generalization Capacities via IBN-Net", Sec. 3.2 / Fig. 3(a).

In the first normalisation of each residual unit of conv2_x-conv4_x (not conv5_x), half
of the channels are instance-normalised (appearance-invariant: colour, style) and the
other half batch-normalised (content-discriminative). Parameter names follow the IBN-Net
authors' code (`<bn>.IN.*`, `<bn>.BN.*`), so their released weight files
(e.g. resnet50_ibn_a-d9d0bb7b.pth) load by name.
"""

from __future__ import annotations

import torch
from torch import nn


class IBN(nn.Module):
    """InstanceNorm2d (affine) on the first int(ratio * channels) channels, BatchNorm2d on
    the rest, concatenated in that order."""

    def __init__(self, channels: int, ratio: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"IBN: ratio must be in (0, 1), got {ratio}")
        self.half = int(channels * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], dim=1)


def add_ibn_a(resnet: nn.Module, ratio: float = 0.5) -> None:
    """Replace `bn1` of every residual unit in layer1-layer3 of a timm/torchvision ResNet
    with IBN (IBN-a; layer4 keeps BatchNorm, as in the paper)."""
    for name in ("layer1", "layer2", "layer3"):
        for block in getattr(resnet, name):
            block.bn1 = IBN(block.bn1.num_features, ratio)
