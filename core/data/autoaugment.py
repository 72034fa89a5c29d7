"""AutoAugment (Cubuk et al. 2019, "AutoAugment: Learning Augmentation Strategies from
Data", the ImageNet policy) on a share of the training images, as fast-reid's SBS uses it
(probability 0.1): torchvision v2's AutoAugment, applied to the image alone.

torchvision's AutoAugment refuses samples that carry boxes or masks, and our samples may
(part boxes of the synthetic world, core.data.spatial). The image is transformed and the
spatial fields pass through unchanged: exact for the photometric operations; a geometric
one (shear, translate, rotate) leaves them unmoved, on that share of the images.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch.utils._pytree import tree_flatten, tree_unflatten
from torchvision import tv_tensors
from torchvision.transforms import v2


def _is_image(value: Any) -> bool:
    if isinstance(value, (Image.Image, tv_tensors.Image)):
        return True
    return isinstance(value, torch.Tensor) and not isinstance(value, tv_tensors.TVTensor)


class RandomAutoAugment(torch.nn.Module):
    """With probability `p`, torchvision's AutoAugment (ImageNet policy) on the sample's
    first image; every other input is returned as given."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.augment = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        if self.p <= 0 or float(torch.rand(())) >= self.p:
            return sample
        flat, spec = tree_flatten(sample)
        index = next((i for i, v in enumerate(flat) if _is_image(v)), None)
        if index is not None:
            flat[index] = self.augment(flat[index])
        return tree_unflatten(flat, spec)
