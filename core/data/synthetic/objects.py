"""Objects (the `object` category): bags, suitcases, boxes, bottles whose identity is a
printed pattern (stripes, dots, checks), its colours and an individual sticker, as in
product / item re-identification. Part boxes: top (handle, lid, cap), body, base."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import ImageDraw

from core.data.synthetic.drawing import Box, article, cloth_color, color_name

#: kind: body width, body height (fractions of the image width).
OBJECT_KINDS = {"backpack": (0.62, 0.85), "suitcase": (0.7, 1.0), "box": (0.78, 0.62), "bottle": (0.38, 1.15),
                "handbag": (0.8, 0.55)}
PATTERNS = ("plain", "stripes", "vstripes", "dots", "checks", "band")


def object_identity(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "kind": str(rng.choice(list(OBJECT_KINDS))),
        "size": rng.uniform(0.85, 1.05),
        "color": cloth_color(rng),
        "pattern": str(rng.choice(PATTERNS, p=[0.05, 0.22, 0.18, 0.2, 0.2, 0.15])),
        "color2": cloth_color(rng),
        "n": int(rng.integers(2, 6)),
        "offset": rng.uniform(0, 1),
        "trim": cloth_color(rng),
        "sticker": (rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.12, 0.25), cloth_color(rng))
        if rng.random() < 0.6 else None,
    }


def object_layout(a: dict[str, Any], view: str, pose: np.ndarray, w: int, h: int) -> dict[str, Any]:
    bw, bh = OBJECT_KINDS[a["kind"]]
    width = w * bw * a["size"] * (0.6 if view == "side" else 1.0)
    height = min(w * bh * a["size"], h * 0.6)
    cx, bottom = w * 0.5, h * (0.72 + (pose[2] - 0.5) * 0.04)
    return {"view": view, "box": (cx - width / 2, bottom - height, cx + width / 2, bottom), "tilt": (pose[0] - 0.5)}


def object_parts(L: dict[str, Any]) -> tuple[Box, Box, Box]:
    x0, y0, x1, y1 = L["box"]
    hg = y1 - y0
    return (x0, y0 - hg * 0.3, x1, y0 + hg * 0.12), (x0, y0, x1, y1), (x0, y1 - hg * 0.2, x1, y1 + hg * 0.06)


def draw_object(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    x0, y0, x1, y1 = L["box"]
    wd, hg, kind, trim = x1 - x0, y1 - y0, a["kind"], a["trim"]
    lw = max(int(wd * 0.07), 1)
    if kind in ("suitcase", "handbag", "backpack"):  # handle above the body
        hx0, hx1 = x0 + wd * 0.3, x1 - wd * 0.3
        top = y0 - hg * (0.28 if kind == "handbag" else 0.15)
        d.line([(hx0, y0 + 1), (hx0, top), (hx1, top), (hx1, y0 + 1)], fill=trim, width=lw, joint="curve")
    body = (x0, y0, x1, y1)
    if kind == "bottle":
        neck = wd * 0.3
        d.rectangle(((x0 + x1) / 2 - neck / 2, y0 - hg * 0.22, (x0 + x1) / 2 + neck / 2, y0 + 1), fill=a["color"])
        d.rectangle(((x0 + x1) / 2 - neck * 0.6, y0 - hg * 0.3, (x0 + x1) / 2 + neck * 0.6, y0 - hg * 0.2), fill=trim)
        d.rounded_rectangle(body, radius=max(wd * 0.3, 1), fill=a["color"])
        inner = (x0, y0 + hg * 0.25, x1, y1 - hg * 0.12)  # the label carries the pattern
    elif kind == "box":
        d.rectangle(body, fill=a["color"])
        d.rectangle((x0, y0, x1, y0 + hg * 0.12), fill=trim)  # lid
        inner = (x0, y0 + hg * 0.12, x1, y1)
    else:
        d.rounded_rectangle(body, radius=max(wd * (0.25 if kind == "backpack" else 0.08), 1), fill=a["color"])
        inner = (x0 + wd * 0.06, y0 + hg * 0.06, x1 - wd * 0.06, y1 - hg * 0.06)
    _pattern(d, a, inner)
    if kind == "suitcase":
        for wx in (x0 + wd * 0.15, x1 - wd * 0.15):
            r = wd * 0.07
            d.ellipse((wx - r, y1 - r * 0.2, wx + r, y1 + r * 1.6), fill=(25, 25, 25))
    if kind == "backpack" and L["view"] == "front":
        d.rounded_rectangle((x0 + wd * 0.2, y0 + hg * 0.5, x1 - wd * 0.2, y1 - hg * 0.05), radius=max(wd * 0.08, 1),
                            outline=trim, width=lw)
    s = a["sticker"]
    if s is not None and L["view"] == "front":
        u, v, size, col = s
        ix0, iy0, ix1, iy1 = inner
        sx, sy, r = ix0 + (ix1 - ix0) * u, iy0 + (iy1 - iy0) * v, wd * size * 0.5
        d.ellipse((sx - r, sy - r, sx + r, sy + r), fill=col, outline=(250, 250, 250))


def _pattern(d: ImageDraw.ImageDraw, a: dict[str, Any], box: Box) -> None:
    """The printed pattern, kept inside `box` so it never spills onto the background."""
    x0, y0, x1, y1 = box
    wd, hg, n, c2, off = x1 - x0, y1 - y0, a["n"], a["color2"], a["offset"]
    p = a["pattern"]
    if p == "stripes":
        for i in range(n):
            y = y0 + hg * (i + off * 0.5) / n
            d.rectangle((x0, y, x1, min(y + hg * 0.45 / n, y1)), fill=c2)
    elif p == "vstripes":
        for i in range(n):
            x = x0 + wd * (i + off * 0.5) / n
            d.rectangle((x, y0, min(x + wd * 0.45 / n, x1), y1), fill=c2)
    elif p == "dots":
        r = min(wd, hg) / (n * 3.2)
        for i in range(n):
            for j in range(n + 1):
                x = x0 + wd * (i + 0.5 + 0.5 * (j % 2) * off) / (n + 0.5)
                y = y0 + hg * (j + 0.5) / (n + 1)
                d.ellipse((x - r, y - r, x + r, y + r), fill=c2)
    elif p == "checks":
        m = n + 1
        for i in range(m):
            for j in range(m):
                if (i + j) % 2 == 0:
                    d.rectangle((x0 + wd * i / m, y0 + hg * j / m, x0 + wd * (i + 1) / m, y0 + hg * (j + 1) / m), fill=c2)
    elif p == "band":
        y = y0 + hg * (0.15 + 0.55 * off)
        d.rectangle((x0, y, x1, y + hg * 0.1 * (1 + n * 0.3)), fill=c2)


_PATTERN_WORDS = {"plain": "plain", "stripes": "horizontal stripes", "vstripes": "vertical stripes", "dots": "dots",
                  "checks": "checks", "band": "a band"}


def object_attributes(a: dict[str, Any]) -> dict[str, str]:
    return {
        "type": a["kind"],
        "color": color_name(a["color"]),
        "pattern": _PATTERN_WORDS[a["pattern"]],
        "pattern_color": color_name(a["color2"]) if a["pattern"] != "plain" else "none",
        "trim": color_name(a["trim"]),
        "sticker": color_name(a["sticker"][3]) if a["sticker"] is not None else "none",
    }


_TRIM_WORDS = {"backpack": "straps", "suitcase": "handle", "box": "lid", "bottle": "cap", "handbag": "handle"}


def object_caption(t: dict[str, str]) -> str:
    """e.g. 'a blue suitcase with white dots, a black handle and a red sticker'."""
    pattern = t["pattern"]
    if pattern == "plain":
        parts = []
    elif pattern == "a band":
        parts = [f"{article(t['pattern_color'])} band"]
    else:
        parts = [f"{t['pattern_color']} {pattern}"]
    parts.append(f"{article(t['trim'])} {_TRIM_WORDS[t['type']]}")
    if t["sticker"] != "none":
        parts.append(f"{article(t['sticker'])} sticker")
    listed = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return f"{article(t['color'])} {t['type']} with {listed}"
