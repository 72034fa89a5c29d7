"""The grounder interface: images -> one box per part, or "not found".

MUVA's visual grounding expert answers b^p = E_VGE(I, Q^p) for each part p (Sec. 3.2.3).
A grounder is that expert behind a small interface, so the labeler (calibration,
voting, the file) does not care whether boxes come from CogVLM, OWL-ViT, another tool's
file, the dataset's own annotations or fixed stripes.

A grounder class is chosen in YAML by name (`grounder: {name: owlvit, threshold: 0.2}`);
its constructor parameters are its YAML keys, except `parts` (the labeler's part names,
injected). Loading a model is deferred to the first `ground` call, so building a
pipeline whose labels are already up to date loads no weights.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from core.records import Record


@dataclass
class Grounding:
    """What a grounder returns for a batch of B images and P parts.

    boxes: (B, P, 4) float [x0, y0, x1, y1], fractions of each image (values where
      `found` is false are ignored); found: (B, P) bool; extras: more raw per-image
      fields kept in the annotation file for inspection (e.g. the model's answers, its
      scores), each with B rows.
    """

    boxes: np.ndarray
    found: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class Grounder(abc.ABC):
    """Locates each of `parts` in each image."""

    #: the name it is registered under (set by the registry)
    name: str = ""

    def __init__(self, parts: Sequence[str]) -> None:
        self.parts = list(parts)

    @abc.abstractmethod
    def ground(self, images: list[Any], records: list[Record]) -> Grounding:
        """Boxes of every part in every image (decoded RGB PIL images, their records
        beside them)."""

    def empty(self, batch: int) -> Grounding:
        """A batch with nothing found, to fill in."""
        p = len(self.parts)
        return Grounding(boxes=np.zeros((batch, p, 4), dtype=np.float32), found=np.zeros((batch, p), dtype=bool))


def image_size(image: Any) -> tuple[int, int]:
    """(width, height) of a PIL image or an (H, W, C) array."""
    if hasattr(image, "size") and isinstance(image.size, tuple):
        return int(image.size[0]), int(image.size[1])
    shape = np.asarray(image).shape
    return int(shape[1]), int(shape[0])


def check_grounding(result: Any, batch: int, parts: int, grounder: str) -> Grounding:
    """Validate a grounder's output and sanitise its boxes: NaN boxes are not found,
    corners in order, clipped to the image; boxes of parts not found are zeros."""
    if not isinstance(result, Grounding):
        raise TypeError(f"grounder '{grounder}' returned {type(result).__name__}; ground() must return a Grounding")
    boxes = np.asarray(result.boxes, dtype=np.float32)
    found = np.asarray(result.found).astype(bool)
    if boxes.shape != (batch, parts, 4) or found.shape != (batch, parts):
        raise ValueError(f"grounder '{grounder}' returned boxes {boxes.shape} and found {found.shape} for {batch} "
                         f"images and {parts} parts; expected ({batch}, {parts}, 4) and ({batch}, {parts})")
    found &= np.isfinite(boxes).all(-1)
    boxes = np.where(found[..., None], np.nan_to_num(boxes), 0.0)
    boxes = np.concatenate([np.minimum(boxes[..., :2], boxes[..., 2:]), np.maximum(boxes[..., :2], boxes[..., 2:])], -1)
    boxes = np.clip(boxes, 0.0, 1.0).astype(np.float32)
    for key, values in result.extras.items():
        if len(values) != batch:
            raise ValueError(f"grounder '{grounder}': extra field '{key}' has {len(values)} rows for {batch} images")
    return Grounding(boxes=boxes, found=found, extras={k: np.asarray(v) for k, v in result.extras.items()})
