"""Shared drawing helpers of the synthetic world: colours, their names, polygon slices.

Colour names are what captions and attribute strings say; they are computed from the
very RGB value the renderer paints, so a caption never disagrees with its image (before
the camera's light and colour cast, as a person would name a garment's colour).
"""

from __future__ import annotations

import colorsys
from typing import Any

import numpy as np

Color = tuple[int, int, int]
Box = tuple[float, float, float, float]


def hsv(h: float, s: float, v: float) -> Color:
    """HSV in [0, 1] -> an RGB tuple of ints (PIL's fill format)."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def cloth_color(rng: np.random.Generator) -> Color:
    """A garment colour: mostly saturated hues, sometimes a neutral (black, grey, white)."""
    if rng.random() < 0.25:
        return hsv(0.0, 0.0, float(rng.choice([0.12, 0.35, 0.6, 0.92])))
    return hsv(rng.random(), rng.uniform(0.45, 0.95), rng.uniform(0.35, 0.95))


def shade(c: Color, f: float) -> Color:
    return tuple(int(min(255, max(0, v * f))) for v in c)  # type: ignore[return-value]


def color_name(c: Color) -> str:
    """The everyday name of an RGB colour (one word): black, white, grey, brown, red,
    orange, yellow, green, teal, blue, purple or pink."""
    h, s, v = colorsys.rgb_to_hsv(*(x / 255.0 for x in c))
    if v < 0.2:
        return "black"
    if s < 0.2:
        return "white" if v > 0.82 else ("grey" if v > 0.3 else "black")
    if 0.02 <= h < 0.12 and v < 0.62:
        return "brown"
    for limit, name in ((0.04, "red"), (0.1, "orange"), (0.18, "yellow"), (0.45, "green"), (0.53, "teal"),
                        (0.72, "blue"), (0.82, "purple"), (0.95, "pink"), (1.01, "red")):
        if h < limit:
            return name
    return "red"  # pragma: no cover - h < 1.01 always


def grey_of(c: Color) -> int:
    """Luminance (ITU-R 601), 0..255."""
    return int(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def is_color(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 3 and all(isinstance(v, (int, np.integer)) for v in value)


def article(word: str) -> str:
    """'a red', 'an orange'."""
    return ("an " if word[:1] in "aeiou" else "a ") + word


def band(x0: float, x1: float, xb0: float, xb1: float, y0: float, y1: float,
         ya: float, yb: float) -> list[tuple[float, float]]:
    """The horizontal slice [ya, yb] of the trapezoid with top edge x0..x1 at y0 and
    bottom edge xb0..xb1 at y1 (stripes on a torso that widens or narrows)."""
    def edge(y: float) -> tuple[float, float]:
        t = (y - y0) / max(y1 - y0, 1e-6)
        return x0 + (xb0 - x0) * t, x1 + (xb1 - x1) * t
    (la, ra), (lb, rb) = edge(ya), edge(yb)
    return [(la, ya), (ra, ya), (rb, yb), (lb, yb)]


def ellipse_band(cx: float, cy: float, a: float, b: float, xa: float, xb: float,
                 steps: int = 4) -> list[tuple[float, float]]:
    """The vertical slice [xa, xb] of an ellipse, as a polygon (an animal's stripe)."""
    xs = np.linspace(max(xa, cx - a), min(xb, cx + a), steps)
    h = b * np.sqrt(np.clip(1.0 - ((xs - cx) / a) ** 2, 0.0, 1.0))
    top = [(float(x), float(cy - d)) for x, d in zip(xs, h)]
    bottom = [(float(x), float(cy + d)) for x, d in zip(xs[::-1], h[::-1])]
    return top + bottom


def union(*boxes: Box) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))
