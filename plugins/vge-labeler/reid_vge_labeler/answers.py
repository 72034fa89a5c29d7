"""Reading boxes out of a grounding model's text answer (MUVA Sec. 3.2.3: "the VGE
generates an answer containing the bounding box coordinates b = [x_min, y_min, x_max,
y_max]"), and choosing one box when an answer holds several.

CogVLM's grounding models write boxes inside double brackets with integer coordinates on
a 0-1000 scale, several boxes of one phrase separated by ';' (as CogVLM's own grounding
parser reads them: every "[[...]]" group, split at ';'):

    "the legs of the person[[102,488,905,996]]"
    "[[081,305,460,962;511,301,918,958]]"            (two legs, or two people)

Other tools write plain boxes in single brackets or parentheses, in pixels of the image
or as fractions: "[53, 20, 98, 71]", "(0.21, 0.05, 0.78, 0.30)".

Rules (ours):
  - double-bracket boxes win: when an answer holds any, plain boxes are ignored;
  - a double-bracket box is divided by `scale` (1000);
  - a plain box (exactly 4 numbers in [] or ()) is read as fractions when every number is
    in [0, 1], else as pixels of the image (divided by its width and height);
  - corners are put in order (x0 <= x1, y0 <= y1) and clipped to the image;
  - a group that does not hold exactly 4 numbers is not a box; no box: not found
    ("[[a,b,c,d];[e,f,g,h]]" is read as two boxes too).
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np

_DOUBLE = re.compile(r"\[\[(.*?)\]\]")
_PLAIN = re.compile(r"[\[(]([^\[\]()]*)[\])]")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")

PICK_RULES = ("first", "largest", "union")
Pick = Literal["first", "largest", "union"]


def parse_boxes(answer: str, image_size: tuple[int, int] | None = None, scale: float = 1000.0) -> np.ndarray:
    """All boxes of `answer`, in the order written, as (K, 4) float32 fractions [x0, y0,
    x1, y1]. `image_size` = (width, height) of the image the answer is about, needed for
    plain pixel boxes (without it they are skipped)."""
    if not isinstance(answer, str):
        raise TypeError(f"a grounding answer is a string, got {type(answer).__name__}")
    boxes = []
    for group in _DOUBLE.findall(answer):
        for chunk in group.split(";"):
            numbers = _numbers(chunk)
            if numbers is not None:
                boxes.append(np.asarray(numbers) / float(scale))
    if not boxes:
        for group in _PLAIN.findall(_DOUBLE.sub(" ", answer)):
            numbers = _numbers(group)
            if numbers is None:
                continue
            if all(0.0 <= v <= 1.0 for v in numbers):
                boxes.append(np.asarray(numbers))
            elif image_size is not None:
                w, h = image_size
                boxes.append(np.asarray(numbers) / np.asarray([w, h, w, h], dtype=np.float64))
    if not boxes:
        return np.zeros((0, 4), dtype=np.float32)
    b = np.stack(boxes)
    b = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], axis=1)
    return np.clip(b, 0.0, 1.0).astype(np.float32)


def _numbers(text: str) -> list[float] | None:
    found = _NUMBER.findall(text)
    if len(found) != 4 or _NUMBER.sub("", text).strip(" ,\t[]") != "":
        return None
    return [float(v) for v in found]


def pick_box(boxes: np.ndarray, rule: Pick = "first") -> np.ndarray | None:
    """One box from several (K, 4): `first` (the model's first answer: what it names
    first is its best guess), `largest` (by area: the main person of a crop is the
    largest), `union` (their bounding box: an over-split part, e.g. two legs). None when
    there is no box."""
    if rule not in PICK_RULES:
        raise ValueError(f"pick: unknown rule {rule!r}; valid rules: {', '.join(PICK_RULES)}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return None
    if rule == "first":
        return boxes[0]
    if rule == "largest":
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return boxes[int(np.argmax(area))]
    return np.concatenate([boxes[:, :2].min(0), boxes[:, 2:].max(0)])
