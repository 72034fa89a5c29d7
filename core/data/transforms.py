"""Image transforms: the ReID standard (resize, flip, pad + crop, normalise, erasing), and
AutoAugment (Cubuk et al. 2019, ImageNet policy) applied to a share of the training images,
as fast-reid's SBS does (probability 0.1).

Built on torchvision.transforms.v2, which draws every random choice from torch's
generator, so `ImageSamples` can make augmentation a function of a per-sample seed.
The parameters are the YAML keys of `data.transform`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

#: (mean, std) per normalisation name: ImageNet backbones, CLIP backbones, [-1, 1].
NORMS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
INTERPOLATIONS: dict[str, InterpolationMode] = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
#: the resize of build_transform unless `interpolation` says otherwise (export.json names it)
DEFAULT_INTERPOLATION = "bicubic"


def build_transform(
    train: bool,
    size: list[int] = [256, 128],  # noqa: B006 - YAML default, never mutated
    pad: int = 10,
    flip: float = 0.5,
    erasing: float = 0.0,
    norm: str = "imagenet",
    interpolation: str = DEFAULT_INTERPOLATION,
    erasing_scale: list[float] = [0.02, 0.33],  # noqa: B006 - YAML default, never mutated
    autoaugment: float = 0.0,
    device_normalise: bool = False,
) -> Callable[..., torch.Tensor]:
    """PIL image -> float tensor (3, H, W). Train: resize, flip, pad + random crop,
    normalise, random erasing (after normalisation, so erased pixels are mean-coloured).
    `erasing_scale`: the erased area's range, as a share of the image (Zhong et al. 2020,
    Random Erasing: [0.02, 0.4] in BoT). `autoaugment`: probability of applying torchvision's
    AutoAugment (ImageNet policy) to a training image, after the resize (core.data.autoaugment).
    Test: resize and normalise only. `device_normalise` (training only): the transform
    stops at the uint8 image and the trainer converts, normalises and erases on the device
    (core.data.device_normalise; the same batches, a quarter of the bytes to copy)."""
    _check(size, pad, flip, erasing, norm, interpolation)
    if not 0.0 <= autoaugment <= 1.0:
        raise ValueError(f"transform: 'autoaugment' is a probability in [0, 1]; got {autoaugment}")
    if len(erasing_scale) != 2 or not 0.0 < float(erasing_scale[0]) <= float(erasing_scale[1]) <= 1.0:
        raise ValueError(f"transform: 'erasing_scale' must be [low, high] with 0 < low <= high <= 1; got {erasing_scale}")
    mean, std = NORMS[norm]
    height, width = int(size[0]), int(size[1])
    steps: list[Callable] = [v2.Resize((height, width), interpolation=INTERPOLATIONS[interpolation], antialias=True)]
    if train:
        if autoaugment > 0:
            from core.data.autoaugment import RandomAutoAugment

            steps.append(RandomAutoAugment(autoaugment))
        if flip > 0:
            steps.append(v2.RandomHorizontalFlip(flip))
        if pad > 0:
            steps += [v2.Pad(pad), v2.RandomCrop((height, width))]
    erase = v2.RandomErasing(p=erasing, scale=tuple(float(v) for v in erasing_scale), value=0) \
        if train and erasing > 0 else None
    if train and device_normalise:
        from core.data.device_normalise import DeviceNormalise

        compose = v2.Compose([*steps, v2.ToImage()])
        compose.device_normalise = DeviceNormalise(mean, std, erase)
        return compose
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if erase is not None:
        steps.append(erase)
    return v2.Compose(steps)


def _check(size: list[int], pad: int, flip: float, erasing: float, norm: str, interpolation: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"transform: unknown norm '{norm}'; valid values: {', '.join(NORMS)}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"transform: unknown interpolation '{interpolation}'; "
                         f"valid values: {', '.join(INTERPOLATIONS)}")
    if len(size) != 2 or any(int(v) < 1 for v in size):
        raise ValueError(f"transform: 'size' must be [height, width] of positive ints; got {size}")
    if pad < 0:
        raise ValueError(f"transform: 'pad' must be >= 0; got {pad}")
    for key, p in (("flip", flip), ("erasing", erasing)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"transform: '{key}' is a probability in [0, 1]; got {p}")
