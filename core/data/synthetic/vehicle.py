"""Vehicles: identity in body shape, paint, markings and wheels. Part boxes: roof/cabin,
body, wheels."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import ImageDraw

from core.data.synthetic.drawing import Box, article, cloth_color, color_name, hsv, shade

CAR_PAINTS = ((235, 235, 235), (25, 25, 28), (160, 165, 170), (180, 20, 25), (20, 50, 150), (30, 110, 50),
              (230, 190, 20), (230, 110, 20), (90, 60, 40), (100, 170, 220))


_VEHICLE_SHAPES = {  # side-view proportions: height/length, cabin start/end, cabin height share
    "sedan": (0.36, 0.25, 0.72, 0.45), "hatchback": (0.40, 0.22, 0.86, 0.48),
    "suv": (0.48, 0.18, 0.92, 0.46), "van": (0.58, 0.06, 0.97, 0.55),
    "pickup": (0.44, 0.35, 0.62, 0.48), "truck": (0.62, 0.02, 0.28, 0.55),
}


def vehicle_identity(rng: np.random.Generator) -> dict[str, Any]:
    """Body shape and length, paint, markings (stripe, two-tone, roof), wheel style."""
    paint = CAR_PAINTS[rng.integers(len(CAR_PAINTS))] if rng.random() < 0.6 else cloth_color(rng)
    return {
        "shape": str(rng.choice(list(_VEHICLE_SHAPES))),
        "length": rng.uniform(0.82, 0.97),
        "paint": shade(paint, rng.uniform(0.88, 1.1)),
        "paint2": cloth_color(rng),
        "marking": str(rng.choice(["none", "side_stripe", "racing", "two_tone", "roof"])),
        "stripe_y": rng.uniform(0.25, 0.7),
        "window": hsv(0.6, rng.uniform(0.05, 0.3), rng.uniform(0.12, 0.5)),
        "rim": hsv(0.12, rng.uniform(0, 0.6), float(rng.choice([0.25, 0.75, 0.95]))),
        "wheel": str(rng.choice(["solid", "spokes", "ring"])),
        "wheel_size": rng.uniform(0.11, 0.16),
        "rack": bool(rng.random() < 0.25),
        "cargo": cloth_color(rng),
    }


def vehicle_layout(a: dict[str, Any], view: str, pose: np.ndarray, w: int, h: int) -> dict[str, Any]:
    ratio, *_ = _VEHICLE_SHAPES[a["shape"]]
    if view == "side":
        length = min(w * a["length"], h * 0.9 / ratio)
        width, height = length, length * ratio
    else:
        width = w * 0.78 * (0.9 + 0.1 * a["length"])
        height = width * (0.55 + ratio)
    cx, cy = w * 0.5, h * (0.56 + (pose[2] - 0.5) * 0.04)
    box = (cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)
    return {"box": box, "view": view, "spin": pose[0] * math.pi}


def vehicle_parts(L: dict[str, Any]) -> tuple[Box, Box, Box]:
    """Roof/cabin, body, and wheel boxes (un-warped frame)."""
    x0, y0, x1, y1 = L["box"]
    hgt = y1 - y0
    return (x0, y0, x1, y0 + hgt * 0.45), (x0, y0 + hgt * 0.4, x1, y0 + hgt * 0.85), (x0, y0 + hgt * 0.72, x1, y1)


def draw_vehicle(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    if L["view"] == "side":
        _vehicle_side(d, a, L)
    else:
        _vehicle_end(d, a, L)


def _vehicle_side(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    """Profile facing right: body, cabin with windows, markings, two wheels."""
    x0, y0, x1, y1 = L["box"]
    ln, hg = x1 - x0, y1 - y0
    _, c0, c1, cab = _VEHICLE_SHAPES[a["shape"]]
    r = ln * a["wheel_size"] * 0.75 + hg * 0.08
    body_top = y0 + hg * cab
    body_bot = y1 - r * 0.6
    paint = a["paint"]
    if a["shape"] == "truck":  # cab in front, a tall cargo box behind it
        d.rectangle((x0, y0, x0 + ln * 0.68, body_bot), fill=a["cargo"])
        d.polygon([(x1 - ln * 0.3, y0 + hg * 0.15), (x1 - ln * 0.08, y0 + hg * 0.15), (x1, body_top), (x1, body_bot),
                   (x1 - ln * 0.3, body_bot)], fill=paint)
        d.polygon([(x1 - ln * 0.2, y0 + hg * 0.2), (x1 - ln * 0.09, y0 + hg * 0.2), (x1 - ln * 0.02, body_top)
                   , (x1 - ln * 0.2, body_top)], fill=a["window"])
    else:
        d.rounded_rectangle((x0, body_top, x1, body_bot), radius=max(hg * 0.1, 1), fill=paint)
        cab_x0, cab_x1 = x0 + ln * c0, x0 + ln * c1
        slope = ln * 0.08
        roof_col = a["paint2"] if a["marking"] == "roof" else paint
        d.polygon([(cab_x0, body_top), (cab_x0 + slope, y0), (cab_x1 - slope * 1.4, y0), (cab_x1, body_top)], fill=roof_col)
        inset = hg * 0.08
        d.polygon([(cab_x0 + inset, body_top), (cab_x0 + slope + inset * 0.6, y0 + inset),
                   (cab_x1 - slope * 1.4 - inset * 0.6, y0 + inset), (cab_x1 - inset, body_top)], fill=a["window"])
        pillar = cab_x0 + (cab_x1 - cab_x0) * 0.5
        d.line([(pillar, y0 + inset), (pillar, body_top)], fill=roof_col, width=max(int(ln * 0.025), 1))
        if a["rack"]:
            d.rectangle((cab_x0 + slope, y0 - hg * 0.06, cab_x1 - slope * 1.4, y0 - hg * 0.02), fill=(40, 40, 40))
    _vehicle_marking_side(d, a, x0, x1, body_top, body_bot, ln)
    d.rectangle((x1 - ln * 0.04, body_top + hg * 0.05, x1, body_top + hg * 0.14), fill=(250, 240, 190))
    d.rectangle((x0, body_top + hg * 0.05, x0 + ln * 0.025, body_top + hg * 0.14), fill=(200, 20, 20))
    for fx in (0.18, 0.8):
        _wheel(d, a, x0 + ln * fx, y1 - r, r, L["spin"])


def _vehicle_marking_side(d: ImageDraw.ImageDraw, a: dict[str, Any], x0: float, x1: float,
                          top: float, bot: float, ln: float) -> None:
    m, c2 = a["marking"], a["paint2"]
    if m == "side_stripe":
        y = top + (bot - top) * a["stripe_y"]
        d.rectangle((x0, y, x1, y + (bot - top) * 0.16), fill=c2)
    elif m == "two_tone":
        d.rectangle((x0, top + (bot - top) * 0.55, x1, bot), fill=c2)
    elif m == "racing":
        d.rectangle((x0 + ln * 0.02, top, x1 - ln * 0.02, top + (bot - top) * 0.1), fill=c2)


def _wheel(d: ImageDraw.ImageDraw, a: dict[str, Any], cx: float, cy: float, r: float, spin: float) -> None:
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(18, 18, 18))
    rr = r * 0.55
    if a["wheel"] == "solid":
        d.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=a["rim"])
    elif a["wheel"] == "ring":
        d.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), outline=a["rim"], width=max(int(r * 0.2), 1))
    else:
        for k in range(3):
            t = spin + k * math.pi / 3
            d.line([(cx - rr * math.cos(t), cy - rr * math.sin(t)), (cx + rr * math.cos(t), cy + rr * math.sin(t))],
                   fill=a["rim"], width=max(int(r * 0.18), 1))


def _vehicle_end(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    """Seen from the front (windscreen, headlights, grille) or the back (tail lights)."""
    x0, y0, x1, y1 = L["box"]
    wd, hg = x1 - x0, y1 - y0
    front = L["view"] == "front"
    paint = a["paint"]
    tyre = hg * 0.12
    for s in (x0 + wd * 0.06, x1 - wd * 0.2):
        d.rectangle((s, y1 - tyre, s + wd * 0.14, y1), fill=(18, 18, 18))
    body_top = y0 + hg * 0.42
    body_bot = y1 - tyre * 0.7
    cargo = a["shape"] == "truck" and not front
    d.polygon([(x0 + wd * 0.1, y0), (x1 - wd * 0.1, y0), (x1, body_top), (x0, body_top)],
              fill=a["cargo"] if cargo else (a["paint2"] if a["marking"] == "roof" else paint))
    if not cargo:
        g = hg * 0.06
        d.polygon([(x0 + wd * 0.1 + g, y0 + g), (x1 - wd * 0.1 - g, y0 + g), (x1 - g, body_top), (x0 + g, body_top)],
                  fill=a["window"])
    d.rounded_rectangle((x0, body_top, x1, body_bot), radius=max(hg * 0.06, 1), fill=paint)
    m, c2 = a["marking"], a["paint2"]
    if m == "two_tone":
        d.rectangle((x0, body_top + (body_bot - body_top) * 0.55, x1, body_bot), fill=c2)
    elif m == "racing":
        for s in (-1, 1):
            xm = (x0 + x1) / 2 + s * wd * 0.1
            d.rectangle((xm - wd * 0.05, y0 if cargo else body_top, xm + wd * 0.05, body_bot), fill=c2)
    elif m == "side_stripe":
        y = body_top + (body_bot - body_top) * a["stripe_y"]
        for xa, xb in ((x0, x0 + wd * 0.06), (x1 - wd * 0.06, x1)):
            d.rectangle((xa, y, xb, y + (body_bot - body_top) * 0.16), fill=c2)
    ly = body_top + (body_bot - body_top) * 0.2
    light = (250, 245, 200) if front else (210, 20, 20)
    lh = (body_bot - body_top) * 0.22
    for xa in (x0 + wd * 0.05, x1 - wd * 0.23):
        d.rectangle((xa, ly, xa + wd * 0.18, ly + lh), fill=light)
    if front:
        d.rectangle((x0 + wd * 0.3, ly, x1 - wd * 0.3, ly + lh * 1.5), fill=(30, 30, 32))
    d.rectangle((x0 + wd * 0.38, body_bot - lh * 1.2, x1 - wd * 0.38, body_bot - lh * 0.4), fill=(240, 240, 240))




_MARKING_WORDS = {"none": "none", "side_stripe": "side stripe", "racing": "racing stripes",
                  "two_tone": "two-tone", "roof": "roof"}
_WHEEL_WORDS = {"solid": "solid", "spokes": "spoked", "ring": "ring"}


def vehicle_attributes(a: dict[str, Any]) -> dict[str, str]:
    return {
        "type": a["shape"],
        "color": color_name(a["paint"]),
        "marking": _MARKING_WORDS[a["marking"]],
        "marking_color": color_name(a["paint2"]) if a["marking"] != "none" else "none",
        "wheels": _WHEEL_WORDS[a["wheel"]],
        "rim_color": color_name(a["rim"]),
        "roof_rack": "yes" if a["rack"] and a["shape"] != "truck" else "no",
        "cargo_color": color_name(a["cargo"]) if a["shape"] == "truck" else "none",
    }


def vehicle_caption(t: dict[str, str]) -> str:
    """e.g. 'a white suv with a red side stripe, grey spoked wheels and a roof rack'."""
    parts = []
    if t["cargo_color"] != "none":
        parts.append(f"{article(t['cargo_color'])} cargo box")
    m, mc = t["marking"], t["marking_color"]
    if m == "two-tone":
        parts.append(f"{article(mc)} lower body")
    elif m == "roof":
        parts.append(f"{article(mc)} roof")
    elif m == "racing stripes":
        parts.append(f"{mc} racing stripes")
    elif m == "side stripe":
        parts.append(f"{article(mc)} side stripe")
    parts.append(f"{t['rim_color']} {t['wheels']} wheels")
    if t["roof_rack"] == "yes":
        parts.append("a roof rack")
    listed = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return f"{article(t['color'])} {t['type']} with {listed}"
