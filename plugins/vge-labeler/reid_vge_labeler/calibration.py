"""Calibration of grounding boxes, b~^p = Calib(b^p) (MUVA Sec. 3.2.3, Figure 5).

The paper replaces "extremely large or small boxes" by stripe windows at the top,
middle or bottom of the image, per part, from the statistics of the boxes' heights; its
thresholds were not published. Our rule (METHODS.md "VGE labels"), for each part p over
the whole dataset, with h = (y1 - y0), the box height as a fraction of the image height:

  - missing (no box found)         -> replaced ("missing");
  - h > max_h[p]                   -> replaced ("too_tall": the whole person, Figure 5 (b));
  - h < min_h[p]                   -> replaced ("too_short": over-split, Figure 5 (c), (d));
  - otherwise the box is kept.

max_h defaults to 0.9 (0.95 for legs, which reach the feet). min_h defaults to the
`min_h_percentile`-th percentile (2) of the heights of the part's found boxes that are not
too tall (numpy's linear interpolation), but at least `min_h_floor` (0.05): the floor
catches a cluster of fragments large enough to hold the percentile. The comparisons are
strict. A replaced box becomes the part's stripe window (parts.DEFAULT_STRIPES).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

KEPT, TOO_TALL, TOO_SHORT, MISSING = 0, 1, 2, 3
#: names of the `part_calibration` codes (uint8), in code order
CODE_NAMES = ("kept", "too_tall", "too_short", "missing")


@dataclass
class Calibration:
    """Calibrated boxes (N, P, 4), the reason code per box (N, P) and the thresholds used."""

    boxes: np.ndarray
    codes: np.ndarray
    max_h: list[float]
    min_h: list[float]

    def report(self, parts: Sequence[str]) -> dict[str, Any]:
        """Per part: the fraction of images whose box was replaced, and why; the
        thresholds; overall: the fraction of all boxes replaced."""
        n = max(len(self.codes), 1)
        out: dict[str, Any] = {}
        for p, part in enumerate(parts):
            c = self.codes[:, p]
            out[part] = {"replaced": float((c != KEPT).sum() / n),
                         **{name: float((c == code).sum() / n) for code, name in enumerate(CODE_NAMES) if code},
                         "max_h": round(self.max_h[p], 4), "min_h": round(self.min_h[p], 4)}
        out["replaced"] = float((self.codes != KEPT).mean()) if self.codes.size else 0.0
        return out


def min_height(heights: np.ndarray, percentile: float, floor: float) -> float:
    """max(floor, the `percentile`-th percentile of `heights`); `floor` when there are none."""
    heights = np.asarray(heights, dtype=np.float64)
    if heights.size == 0:
        return float(floor)
    return float(max(floor, np.percentile(heights, percentile)))


def calibrate(boxes: np.ndarray, found: np.ndarray, stripes: np.ndarray, max_h: Sequence[float],
              min_h: Sequence[float | None], min_h_percentile: float = 2.0, min_h_floor: float = 0.05) -> Calibration:
    """Apply the rule above. boxes (N, P, 4) fractions, found (N, P) bool, stripes (P, 4);
    max_h per part; min_h per part, None for the percentile rule."""
    boxes = np.asarray(boxes, dtype=np.float32)
    found = np.asarray(found, dtype=bool)
    heights = boxes[..., 3] - boxes[..., 1]
    codes = np.where(found, KEPT, MISSING).astype(np.uint8)
    used_min: list[float] = []
    for p in range(boxes.shape[1]):
        tall = found[:, p] & (heights[:, p] > max_h[p])
        low = min_h[p] if min_h[p] is not None else \
            min_height(heights[found[:, p] & ~tall, p], min_h_percentile, min_h_floor)
        short = found[:, p] & ~tall & (heights[:, p] < low)
        codes[tall, p] = TOO_TALL
        codes[short, p] = TOO_SHORT
        used_min.append(float(low))
    out = boxes.copy()
    replace = codes != KEPT
    out[replace] = np.broadcast_to(np.asarray(stripes, dtype=np.float32), boxes.shape)[replace]
    return Calibration(boxes=out, codes=codes, max_h=[float(v) for v in max_h], min_h=used_min)
