"""Animals: identity in the individual coat texture (stripes / spots barcode), fur colours
and build, as in animal re-identification (zebras, tigers, giraffes). Part boxes: head,
body, legs."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import ImageDraw

from core.data.synthetic.drawing import Box, article, color_name, ellipse_band, shade

FUR_COLORS = ((200, 140, 60), (120, 80, 45), (60, 50, 45), (225, 215, 195), (150, 150, 145), (235, 170, 90),
              (30, 28, 26))


def animal_identity(rng: np.random.Generator) -> dict[str, Any]:
    """Fur colour, build, and an individual coat texture (the stripes/spots barcode)."""
    coat = str(rng.choice(["stripes", "spots", "patches", "plain"], p=[0.35, 0.35, 0.2, 0.1]))
    n = int(rng.integers(5, 10)) if coat != "patches" else int(rng.integers(2, 4))
    return {
        "fur": shade(FUR_COLORS[rng.integers(len(FUR_COLORS))], rng.uniform(0.85, 1.12)),
        "mark": shade(FUR_COLORS[rng.integers(len(FUR_COLORS))], rng.uniform(0.4, 0.8)),
        "belly": bool(rng.random() < 0.5),
        "coat": coat,
        # texture in body coordinates: (u along the body in [-1, 1], v across, size)
        "texture": np.column_stack([rng.uniform(-0.85, 0.85, n), rng.uniform(-0.6, 0.6, n),
                                    rng.uniform(0.06, 0.22 if coat != "patches" else 0.45, n)]),
        "body_len": rng.uniform(0.8, 0.95),
        "body_h": rng.uniform(0.28, 0.4),
        "legs": rng.uniform(0.3, 0.5),
        "ears": str(rng.choice(["pointed", "round", "floppy"])),
        "tail": rng.uniform(0.2, 0.45),
    }


def animal_layout(a: dict[str, Any], view: str, pose: np.ndarray, w: int, h: int) -> dict[str, Any]:
    """Body ellipse centre and radii; front/back views foreshorten the body."""
    view = "side" if view == "back" else view  # seen from behind, a walking animal shows a flank
    length = w * a["body_len"] * (0.85 if view == "side" else 0.6) * (0.8 + 0.2 * pose[3])
    ba = length * 0.36 if view == "side" else length * 0.42
    bb = min(length * a["body_h"] * (1.0 if view == "side" else 1.5), h * 0.2)
    leg = min(bb * 2.0 * a["legs"] / 0.4, h * 0.2)
    cx = w * 0.5 - (ba * 0.12 if view == "side" else 0.0)
    cy = h * (0.55 + (pose[2] - 0.5) * 0.04) - leg * 0.3
    hr = bb * (0.7 if view == "side" else 0.5)
    return {"cx": cx, "cy": cy, "a": ba, "b": bb, "leg": leg, "hr": hr, "view": view,
            "stride": (pose[0] - 0.5) * 2.0, "nod": (pose[1] - 0.5) * 2.0}


def _animal_head_center(L: dict[str, Any]) -> tuple[float, float]:
    if L["view"] == "side":
        return L["cx"] + L["a"] * 1.05, L["cy"] - L["b"] * (1.1 + 0.2 * L["nod"])
    return L["cx"], L["cy"] - L["b"] * (1.0 + 0.1 * L["nod"])


def animal_parts(L: dict[str, Any]) -> tuple[Box, Box, Box]:
    hx, hy = _animal_head_center(L)
    r = L["hr"] * 1.4
    head = (hx - r, hy - r, hx + r, hy + L["hr"])
    body = (L["cx"] - L["a"], L["cy"] - L["b"], L["cx"] + L["a"], L["cy"] + L["b"])
    legs = (L["cx"] - L["a"], L["cy"] + L["b"] * 0.5, L["cx"] + L["a"], L["cy"] + L["b"] + L["leg"])
    return head, body, legs


def draw_animal(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    """A quadruped: legs, tail, textured body, head with ears."""
    cx, cy, ba, bb, leg, view = L["cx"], L["cy"], L["a"], L["b"], L["leg"], L["view"]
    fur, mark = a["fur"], a["mark"]
    lw = max(ba * 0.16, 1.5)
    xs = (-0.65, -0.45, 0.5, 0.7) if view == "side" else (-0.55, -0.2, 0.2, 0.55)
    for i, fx in enumerate(xs):
        x = cx + fx * ba + (L["stride"] * lw * (1 if i % 2 else -1) if view == "side" else 0.0)
        d.rectangle((x - lw / 2, cy, x + lw / 2, cy + bb + leg), fill=shade(fur, 0.85 if i in (1, 2) else 1.0))
        d.rectangle((x - lw / 2, cy + bb + leg * 0.85, x + lw / 2, cy + bb + leg), fill=shade(mark, 0.7))
    if view != "front":
        tx = cx - ba * (0.95 if view == "side" else 0.0)
        d.line([(tx, cy - bb * 0.3), (tx - ba * a["tail"], cy + bb * 0.6)], fill=mark, width=max(int(lw * 0.6), 1))
    d.ellipse((cx - ba, cy - bb, cx + ba, cy + bb), fill=fur)
    if a["belly"]:
        d.chord((cx - ba * 0.9, cy - bb * 0.2, cx + ba * 0.9, cy + bb), 20, 160, fill=(235, 225, 205))
    _animal_coat(d, a, L)
    if view != "back":
        _animal_head(d, a, L)


def _animal_coat(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    """The identity's texture, placed in body coordinates so it follows the body."""
    cx, cy, ba, bb = L["cx"], L["cy"], L["a"], L["b"]
    coat = a["coat"]
    for u, v, s in a["texture"]:
        if coat == "stripes":
            x = cx + u * ba
            d.polygon(ellipse_band(cx, cy - bb * 0.02, ba * 0.98, bb * 0.95, x, x + s * ba * 0.55), fill=a["mark"])
        elif coat in ("spots", "patches"):
            x, y, r = cx + u * ba * 0.8, cy + v * bb * 0.7, s * bb
            d.ellipse((x - r * 1.2, y - r, x + r * 1.2, y + r), fill=a["mark"])


def _animal_head(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    hx, hy = _animal_head_center(L)
    hr, fur, mark = L["hr"], a["fur"], a["mark"]
    ear = hr * 0.6
    for s in (-1, 1):
        ex = hx + s * hr * 0.6 - (hr * 0.3 if L["view"] == "side" else 0.0)
        if a["ears"] == "pointed":
            d.polygon([(ex - ear * 0.5, hy - hr * 0.6), (ex + ear * 0.5, hy - hr * 0.6), (ex, hy - hr - ear)], fill=mark)
        elif a["ears"] == "round":
            d.ellipse((ex - ear * 0.5, hy - hr - ear * 0.5, ex + ear * 0.5, hy - hr + ear * 0.5), fill=mark)
        else:
            d.ellipse((ex - ear * 0.4, hy - hr * 0.6, ex + ear * 0.4, hy + hr * 0.6), fill=mark)
    if L["view"] == "side":
        d.line([(L["cx"] + L["a"] * 0.6, L["cy"] - L["b"] * 0.3), (hx, hy)], fill=fur, width=max(int(hr), 1))
        d.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=fur)
        d.ellipse((hx + hr * 0.3, hy - hr * 0.1, hx + hr * 1.5, hy + hr * 0.6), fill=shade(fur, 0.8))
    else:
        d.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=fur)
        d.ellipse((hx - hr * 0.4, hy, hx + hr * 0.4, hy + hr * 0.7), fill=shade(fur, 0.75))
    d.ellipse((hx - hr * 0.15, hy - hr * 0.35, hx + hr * 0.15, hy - hr * 0.05), fill=(10, 10, 10))




def animal_attributes(a: dict[str, Any]) -> dict[str, str]:
    return {
        "fur": color_name(a["fur"]),
        "coat": a["coat"],
        "mark_color": color_name(a["mark"]) if a["coat"] != "plain" else "none",
        "belly": "white" if a["belly"] else "none",
        "ears": a["ears"],
        "legs": "long" if a["legs"] > 0.4 else "short",
        "tail": "long" if a["tail"] > 0.33 else "short",
    }


def animal_caption(t: dict[str, str]) -> str:
    """e.g. 'a brown animal with black stripes, a white belly, pointed ears, long legs and a short tail'."""
    parts = []
    if t["coat"] != "plain":
        parts.append(f"{t['mark_color']} {t['coat']}")
    if t["belly"] != "none":
        parts.append("a white belly")
    parts += [f"{t['ears']} ears", f"{t['legs']} legs", f"{article(t['tail'])} tail"]
    return f"{article(t['fur'])} animal with " + ", ".join(parts[:-1]) + " and " + parts[-1]
