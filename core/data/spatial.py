"""Spatial annotations that must move with the image: part boxes and part masks.

The contract (DESIGN.md "Batch"; the file format in `core.data.annotations`):

- `part_boxes`: a record holds float (P, 4) boxes [x0, y0, x1, y1] as fractions of its
  image; the batch holds (B, P, 4) as fractions of the transformed image, clipped to it.
- `part_masks`: a record holds (P, rows, cols) {0, 1} masks on the backbone's patch grid;
  the batch holds float (B, P, rows * cols), flattened row-major (patch index
  r * cols + c), so `part_masks[b, p]` lines up with the backbone's patch tokens.

Both go through the sample's transform together with the image (torchvision v2 draws one
set of random parameters per call), so a flipped image comes with flipped parts — MUVA
flips image and mask together. A mask is carried at the image's resolution (each patch
cell a block of pixels) and voted back onto the grid after the transform with the same
coverage rule a labeler uses, `boxes_to_patch_masks`: a patch is in the part when at
least `coverage` of its area is. Without crops this round trip is exact.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as Fn
from torchvision import tv_tensors

#: The record extras that are spatial and follow the image's geometric transform.
SPATIAL_FIELDS = ("part_boxes", "part_masks")

#: Random erasing occludes pixels; where a part lies does not change: passing boxes and
#: masks through it is what we want, so its notice is silenced (per call: pytest and user
#: code reset global filters).
_ERASING_NOTICE = r"(RandomErasing|ColourErasing)\(\) is currently passing through"


def boxes_to_patch_masks(boxes: np.ndarray | torch.Tensor, grid: tuple[int, int],
                         coverage: float = 0.5) -> np.ndarray:
    """Vote boxes onto a patch grid (MUVA's binary voting, our rule): patch (r, c) is in a
    box when the box covers at least `coverage` of the patch's area.

    boxes: (..., 4) [x0, y0, x1, y1] as fractions of the image. Returns bool
    (..., rows, cols). `coverage` in (0, 1]; 0.5 is the default METHODS.md documents.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage is the fraction of a patch a box must cover, in (0, 1]; got {coverage}")
    rows, cols = int(grid[0]), int(grid[1])
    b = np.asarray(boxes, dtype=np.float64)
    if b.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape (..., 4) [x0, y0, x1, y1]; got {b.shape}")
    x0, y0, x1, y1 = (b[..., i, None] for i in range(4))
    edges_y = np.arange(rows + 1) / rows
    edges_x = np.arange(cols + 1) / cols
    # covered fraction of each patch row / column: overlap of intervals, over the cell size
    cover_y = np.clip(np.minimum(y1, edges_y[1:]) - np.maximum(y0, edges_y[:-1]), 0, None) * rows
    cover_x = np.clip(np.minimum(x1, edges_x[1:]) - np.maximum(x0, edges_x[:-1]), 0, None) * cols
    area = cover_y[..., :, None] * cover_x[..., None, :]
    return area >= coverage - 1e-9


def to_tv_tensors(extras: dict[str, Any], image_size: tuple[int, int]) -> dict[str, Any]:
    """Record extras -> torchvision tv_tensors at the image's (height, width), for the
    fields in SPATIAL_FIELDS that are present."""
    height, width = image_size
    out: dict[str, Any] = {}
    if "part_boxes" in extras:
        boxes = torch.as_tensor(np.asarray(extras["part_boxes"], dtype=np.float32)).reshape(-1, 4)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        out["part_boxes"] = tv_tensors.BoundingBoxes(boxes * scale, format="XYXY", canvas_size=(height, width))
    if "part_masks" in extras:
        masks = torch.as_tensor(np.asarray(extras["part_masks"])).to(torch.uint8)
        if masks.dim() != 3:
            raise ValueError("a record's 'part_masks' must have shape (parts, rows, cols) on the patch grid; "
                             f"got {tuple(masks.shape)}")
        up = Fn.interpolate(masks[None].float(), size=(height, width), mode="nearest")[0]
        out["part_masks"] = (tv_tensors.Mask(up.to(torch.uint8)), tuple(masks.shape[1:]))
    return out


def from_tv_tensors(values: dict[str, Any], coverage: float = 0.5) -> dict[str, torch.Tensor]:
    """Transformed tv_tensors -> batch fields: boxes as fractions of the output image
    (clipped), masks voted back onto their grid and flattened row-major."""
    out: dict[str, torch.Tensor] = {}
    if "part_boxes" in values:
        boxes = values["part_boxes"]
        height, width = boxes.canvas_size
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        out["part_boxes"] = (boxes.as_subclass(torch.Tensor).float() / scale).clamp_(0, 1)
    if "part_masks" in values:
        mask, grid = values["part_masks"]
        share = Fn.adaptive_avg_pool2d(mask.as_subclass(torch.Tensor)[None].float(), grid)[0]
        out["part_masks"] = (share >= coverage - 1e-6).float().flatten(1)
    return out


def transform_with_parts(transform: Callable, image: Any, extras: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Apply `transform` to the image and its spatial extras with one draw of the random
    parameters. Returns (image, the transformed spatial fields); other extras untouched."""
    size = (image.height, image.width) if hasattr(image, "height") else tuple(image.shape[-2:])
    spatial = to_tv_tensors(extras, size)
    if not spatial:
        return transform(image), {}
    names = list(spatial)
    inputs = [spatial[n][0] if isinstance(spatial[n], tuple) else spatial[n] for n in names]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_ERASING_NOTICE)
        outputs = transform(image, *inputs)
    moved = {n: ((o, spatial[n][1]) if isinstance(spatial[n], tuple) else o) for n, o in zip(names, outputs[1:])}
    return outputs[0], from_tv_tensors(moved)


def patch_masks_as_batch_field(masks: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(P, rows, cols) -> float (P, rows * cols), row-major: the batch layout without a
    transform (used when a sample is not transformed)."""
    m = torch.as_tensor(np.asarray(masks)).float()
    return m.flatten(1)
