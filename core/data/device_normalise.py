"""uint8 images to the device, converted and normalised there (issue 19): a training
transform built with `device_normalise: true` stops at the uint8 image (no float
conversion in the loader's workers: a quarter of the bytes through pinned memory and
the copy), and the trainer finishes each batch on the device after `.to(device)`:

    x = (u / 255 - mean) / std          (torchvision's ToDtype(scale=True) + Normalize)

with the (mean, std) of the transform's `norm` (core.data.transforms.NORMS). Random
erasing fills with 0 *after* normalisation (the mean colour, exactly); uint8 cannot hold
that value, so the worker only draws the erased box — with the same generator calls as
torchvision's RandomErasing, so the same box for the same sample seed — and the box is
filled here, after normalising: batches equal to the float path's. With `erasing_fill:
random` (core.data.transforms.ColourErasing) the worker also draws the box's colour, after
the box as the float path does, and the box is filled with its normalised value.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
from torchvision.transforms import v2

from core.records import Batch

#: extras field of the erased box (i, j, h, w) per sample, then its colour (r, g, b) under
#: `erasing_fill: random`; h = w = 0: none
ERASE_BOX = "erase_box"


class DeviceNormalise:
    """The part of a training transform that runs on the device (see the module)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], erasing: v2.RandomErasing | None = None) -> None:
        self.mean, self.std, self.erasing = tuple(float(v) for v in mean), tuple(float(v) for v in std), erasing
        #: (mean, std) as (C, 1, 1) tensors by (device, dtype): copied over once, not every
        #: batch (a blocking copy to a GPU waits for its stream)
        self._stats: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def draw(self, image: torch.Tensor) -> torch.Tensor:
        """The erased box of one (C, H, W) image: RandomErasing's draws (probability, then
        its make_params; the colour after the box under ColourErasing), nothing erased."""
        coloured = hasattr(self.erasing, "draw_colour")  # core.data.transforms.ColourErasing
        none = torch.zeros(7 if coloured else 4, dtype=torch.int64)
        if self.erasing is None or torch.rand(1) >= self.erasing.p:
            return none
        params = v2.RandomErasing.make_params(self.erasing, [image])  # the box only
        if params["v"] is None:  # no box fitted in 10 tries: RandomErasing leaves the image
            return none
        box = torch.tensor([params["i"], params["j"], params["h"], params["w"]], dtype=torch.int64)
        return torch.cat([box, self.erasing.draw_colour()]) if coloured else box

    def __call__(self, batch: Batch) -> Batch:
        """The batch (on its device) with float, normalised, erased images; a batch whose
        images are not uint8 (evaluation, float transforms) is returned as it is."""
        if batch.images.dtype != torch.uint8:
            return batch
        images = batch.images.to(torch.float32).mul_(1.0 / 255)
        mean, std = self._on(images.device, images.dtype)
        images = images.sub_(mean).div_(std)
        extras = dict(batch.extras)
        box = extras.pop(ERASE_BOX, None)
        if box is not None:
            box = torch.as_tensor(box, device=images.device)
            inside = _box_mask(box, images.shape)
            if box.shape[1] == 7:  # a solid colour per box: its normalised value
                images = torch.where(inside, self.erasing.normalised(box[:, 4:]).to(images.dtype), images)
            else:
                images = images.masked_fill_(inside, 0.0)
        return replace(batch, images=images, extras=extras)

    def _on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (device, dtype)
        if key not in self._stats:
            self._stats[key] = tuple(torch.tensor(v, dtype=dtype, device=device).view(-1, 1, 1)
                                     for v in (self.mean, self.std))
        return self._stats[key]

    def __getstate__(self) -> dict:  # loader workers get the transform without device tensors
        return {**self.__dict__, "_stats": {}}


def _box_mask(box: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(B, 1, H, W) bool: inside each sample's box (i, j, h, w); no host synchronisation."""
    rows = torch.arange(shape[-2], device=box.device)
    cols = torch.arange(shape[-1], device=box.device)
    i, j, h, w = (box[:, k, None] for k in range(4))
    inside_r = (rows[None] >= i) & (rows[None] < i + h)
    inside_c = (cols[None] >= j) & (cols[None] < j + w)
    return (inside_r[:, :, None] & inside_c[:, None, :])[:, None]


def finish_on_device(batch: Batch, transform: object) -> Batch:
    """`batch` finished by `transform`'s device part when it has one (else unchanged)."""
    finish = getattr(transform, "device_normalise", None)
    return finish(batch) if finish is not None else batch
