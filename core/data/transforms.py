"""Image transforms: the ReID standard (resize, flip, pad + crop, normalise, erasing), and
AutoAugment (Cubuk et al. 2019, ImageNet policy) applied to a share of the training images,
as fast-reid's SBS does (probability 0.1). Colour jitter and erasing with a random solid
colour reproduce the Instruct-ReID authors' training images (their `ColorJitter` and
`RandomSizedEarserImage`, on by default in their code).

Built on torchvision.transforms.v2, which draws every random choice from torch's
generator, so `ImageSamples` can make augmentation a function of a per-sample seed.
The parameters are the YAML keys of `data.transform`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

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
#: what random erasing fills a box with: the mean colour (0 after normalisation) or a random solid colour
ERASING_FILLS = ("mean", "random")


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
    erasing_fill: str = "mean",
    colour_jitter: list[float] | None = None,
    test_interpolation: str | None = None,
) -> Callable[..., torch.Tensor]:
    """PIL image -> float tensor (3, H, W). Train: resize, flip, pad + random crop,
    normalise, random erasing (after normalisation, so erased pixels are mean-coloured).
    `erasing_scale`: the erased area's range, as a share of the image (Zhong et al. 2020,
    Random Erasing: [0.02, 0.4] in BoT). `autoaugment`: probability of applying torchvision's
    AutoAugment (ImageNet policy) to a training image, after the resize (core.data.autoaugment).
    `erasing_fill`: `mean` (0 after normalisation, Zhong et al.) or `random` (one solid colour
    per erased box, each channel uniform in 0..255: `ColourErasing`). `colour_jitter`:
    [brightness, contrast, saturation, hue] of torchvision's ColorJitter, applied to every
    training image before the resize (null: off). `test_interpolation`: the test resize's,
    where a code base resizes test images otherwise than training ones (TransReID: bicubic
    for training, bilinear for testing; null: `interpolation`).
    Test: resize and normalise only. `device_normalise` (training only): the transform
    stops at the uint8 image and the trainer converts, normalises and erases on the device
    (core.data.device_normalise; the same batches, a quarter of the bytes to copy)."""
    _check(size, pad, flip, erasing, norm, interpolation)
    if test_interpolation is not None:
        _check(size, pad, flip, erasing, norm, test_interpolation)
        interpolation = interpolation if train else test_interpolation
    if not 0.0 <= autoaugment <= 1.0:
        raise ValueError(f"transform: 'autoaugment' is a probability in [0, 1]; got {autoaugment}")
    if len(erasing_scale) != 2 or not 0.0 < float(erasing_scale[0]) <= float(erasing_scale[1]) <= 1.0:
        raise ValueError(f"transform: 'erasing_scale' must be [low, high] with 0 < low <= high <= 1; got {erasing_scale}")
    if erasing_fill not in ERASING_FILLS:
        raise ValueError(f"transform: 'erasing_fill' must be one of {', '.join(ERASING_FILLS)}; got {erasing_fill!r}")
    _check_jitter(colour_jitter)
    mean, std = NORMS[norm]
    height, width = int(size[0]), int(size[1])
    steps: list[Callable] = [v2.Resize((height, width), interpolation=INTERPOLATIONS[interpolation], antialias=True)]
    if train and colour_jitter:
        steps.insert(0, v2.ColorJitter(*(float(v) for v in colour_jitter)))
    if train:
        if autoaugment > 0:
            from core.data.autoaugment import RandomAutoAugment

            steps.append(RandomAutoAugment(autoaugment))
        if flip > 0:
            steps.append(v2.RandomHorizontalFlip(flip))
        if pad > 0:
            steps += [v2.Pad(pad), v2.RandomCrop((height, width))]
    scale = tuple(float(v) for v in erasing_scale)
    erase = None
    if train and erasing > 0:
        erase = ColourErasing(erasing, scale, mean, std) if erasing_fill == "random" \
            else v2.RandomErasing(p=erasing, scale=scale, value=0)
    if train and device_normalise:
        from core.data.device_normalise import DeviceNormalise

        compose = v2.Compose([*steps, v2.ToImage()])
        compose.device_normalise = DeviceNormalise(mean, std, erase)
        return compose
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if erase is not None:
        steps.append(erase)
    return v2.Compose(steps)


class ColourErasing(v2.RandomErasing):
    """Random erasing with one solid colour per erased box, each channel drawn uniformly from
    0..255 (the Instruct-ReID authors' `RandomSizedEarserImage`, which pastes it on the image
    before ToTensor); here it is filled after normalisation as its normalised value. Box
    and probability as torchvision's RandomErasing; the colour is drawn after the box."""

    def __init__(self, p: float, scale: tuple[float, float], mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__(p=p, scale=scale, value=0)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def normalised(self, colour: torch.Tensor) -> torch.Tensor:
        """(..., 3) colours 0..255 -> (..., 3, 1, 1) fill values after normalisation, on the
        colours' device (one box here, a batch's boxes in DeviceNormalise)."""
        mean, std = (torch.tensor(v, device=colour.device) for v in (self.mean, self.std))
        return ((colour.float() / 255 - mean) / std)[..., None, None]

    @staticmethod
    def draw_colour() -> torch.Tensor:
        """(3,) int64 colour, each channel uniform in 0..255 (torch's generator)."""
        return torch.randint(0, 256, (3,))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        params = super().make_params(flat_inputs)
        if params["v"] is not None:
            params["v"] = self.normalised(self.draw_colour())
        return params


def _check_jitter(colour_jitter: list[float] | None) -> None:
    if colour_jitter is None:
        return
    values = list(colour_jitter) if isinstance(colour_jitter, (list, tuple)) else []
    if len(values) != 4 or any(float(v) < 0 for v in values) or float(values[3]) > 0.5:
        raise ValueError("transform: 'colour_jitter' must be [brightness, contrast, saturation, hue], each >= 0 "
                         f"and hue <= 0.5 (torchvision's ColorJitter), or null; got {colour_jitter}")


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


def eval_resize(transform: dict) -> str:
    """The interpolation a pipeline's `data.transform` mapping resizes test images with."""
    return transform.get("test_interpolation") or transform.get("interpolation", DEFAULT_INTERPOLATION)
