"""A procedural multi-category ReID world: the default data of the quickstart and the tests.

No dataset can be downloaded on the project's machines, so the world renders identities
(people, vehicles, animals) on the fly with PIL and numpy. An identity is a fixed set of
attributes (body proportions, colours, patterns, accessories); an image is that identity
seen by one camera: a view (front / back / side), a viewpoint-like warp (scale, tilt,
shift, mirror), the camera's background, lighting, colour cast, blur and sensor noise,
plus per-image jitter (pose, placement, occluders). Everything derives from
`np.random.default_rng([seed, ...])`, so a world is the same on every machine and worker.

The pipeline is split so that later features (clothes changes, captions, an infrared
modality) each touch one place: `CategorySpec` (what an identity is and how it is drawn),
`Camera` / `Shot` (how one image looks at it), `render_image` (composition).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from core.interfaces import Dataset
from core.records import Record

Color = tuple[int, int, int]
Box = tuple[float, float, float, float]

VIEWS = ("front", "back", "side")
#: Offset added to a test identity's index so train and test identities never share
#: attributes or pids; pid = category_index * PID_STRIDE + identity index.
PID_STRIDE = 100_000
#: Stream tag of camera parameters in the seed sequence (category indices stay below it).
_CAMERA_STREAM = 1_000


# --------------------------------------------------------------------------- colours

def hsv(h: float, s: float, v: float) -> Color:
    """HSV in [0, 1] -> an RGB tuple of ints (PIL's fill format)."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _cloth_color(rng: np.random.Generator) -> Color:
    """A garment colour: mostly saturated hues, sometimes a neutral (black, grey, white)."""
    if rng.random() < 0.25:
        return hsv(0.0, 0.0, float(rng.choice([0.12, 0.35, 0.6, 0.92])))
    return hsv(rng.random(), rng.uniform(0.45, 0.95), rng.uniform(0.35, 0.95))


def _shade(c: Color, f: float) -> Color:
    return tuple(int(min(255, max(0, v * f))) for v in c)  # type: ignore[return-value]


SKIN_TONES: tuple[Color, ...] = ((255, 224, 196), (241, 194, 150), (224, 172, 105),
                                 (198, 134, 66), (141, 85, 36), (92, 58, 30))
HAIR_COLORS: tuple[Color, ...] = ((20, 16, 14), (70, 44, 26), (120, 80, 40), (220, 190, 120),
                                  (160, 60, 30), (170, 170, 170), (60, 90, 200), (200, 60, 140))
CAR_PAINTS: tuple[Color, ...] = ((235, 235, 235), (25, 25, 28), (160, 165, 170), (180, 20, 25),
                                 (20, 50, 150), (30, 110, 50), (230, 190, 20), (230, 110, 20),
                                 (90, 60, 40), (100, 170, 220))
FUR_COLORS: tuple[Color, ...] = ((200, 140, 60), (120, 80, 45), (60, 50, 45), (225, 215, 195),
                                 (150, 150, 145), (235, 170, 90), (30, 28, 26))


# --------------------------------------------------------------------------- geometry

def _band(x0: float, x1: float, xb0: float, xb1: float, y0: float, y1: float,
          ya: float, yb: float) -> list[tuple[float, float]]:
    """The horizontal slice [ya, yb] of the trapezoid with top edge x0..x1 at y0 and
    bottom edge xb0..xb1 at y1 (stripes on a torso that widens or narrows)."""
    def edge(y: float) -> tuple[float, float]:
        t = (y - y0) / max(y1 - y0, 1e-6)
        return x0 + (xb0 - x0) * t, x1 + (xb1 - x1) * t
    (la, ra), (lb, rb) = edge(ya), edge(yb)
    return [(la, ya), (ra, ya), (rb, yb), (lb, yb)]


def _ellipse_band(cx: float, cy: float, a: float, b: float, xa: float, xb: float,
                  steps: int = 4) -> list[tuple[float, float]]:
    """The vertical slice [xa, xb] of an ellipse, as a polygon (an animal's stripe)."""
    xs = np.linspace(max(xa, cx - a), min(xb, cx + a), steps)
    h = b * np.sqrt(np.clip(1.0 - ((xs - cx) / a) ** 2, 0.0, 1.0))
    top = [(float(x), float(cy - d)) for x, d in zip(xs, h)]
    bottom = [(float(x), float(cy + d)) for x, d in zip(xs[::-1], h[::-1])]
    return top + bottom


def _union(*boxes: Box) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))


# --------------------------------------------------------------------------- person

def person_identity(rng: np.random.Generator) -> dict[str, Any]:
    """What makes one person recognisable: proportions, skin, hair, clothes, bag."""
    top = _cloth_color(rng)
    return {
        "height": rng.uniform(0.78, 0.93),
        "head": rng.uniform(0.065, 0.085),
        "shoulder": rng.uniform(0.17, 0.25),
        "hip": rng.uniform(0.72, 0.95),
        "torso": rng.uniform(0.47, 0.56),
        "skin": _shade(SKIN_TONES[rng.integers(len(SKIN_TONES))], rng.uniform(0.9, 1.08)),
        "hair": HAIR_COLORS[rng.integers(len(HAIR_COLORS))],
        "long_hair": bool(rng.random() < 0.35),
        "hat": _cloth_color(rng) if rng.random() < 0.2 else None,
        "top": top,
        "top2": _cloth_color(rng),
        "pattern": str(rng.choice(["plain", "stripes", "two_tone", "logo", "jacket"])),
        "stripes": int(rng.integers(2, 5)),
        "long_sleeves": bool(rng.random() < 0.55),
        "trousers": _cloth_color(rng),
        "shorts": bool(rng.random() < 0.25),
        "shoes": hsv(0, 0, float(rng.choice([0.1, 0.3, 0.95]))),
        "bag": str(rng.choice(["none", "backpack", "shoulder", "hand"], p=[0.4, 0.3, 0.2, 0.1])),
        "bag_color": _cloth_color(rng),
    }


def person_layout(a: dict[str, Any], view: str, pose: np.ndarray, w: int, h: int) -> dict[str, Any]:
    """Key points of a person in the un-warped frame; shared by drawing and part boxes."""
    ph = h * a["height"]
    top = (h - ph) * 0.5 + h * 0.01
    cx = w * 0.5 + (pose[2] - 0.5) * w * 0.04
    narrow = 0.6 if view == "side" else 1.0
    rh = ph * a["head"]
    sw = w * a["shoulder"] * narrow
    hw = sw * a["hip"]
    neck = top + 2.0 * rh
    hip = top + ph * a["torso"]
    foot = top + ph
    return {"cx": cx, "rh": rh, "head_cy": top + rh, "top": top, "neck": neck, "sw": sw,
            "hw": hw, "hip": hip, "foot": foot, "stride": (pose[0] - 0.5) * 2.0,
            "swing": (pose[1] - 0.5) * 2.0, "view": view}


def person_parts(L: dict[str, Any]) -> tuple[Box, Box, Box]:
    """Head, upper body (with arms) and legs boxes in pixels of the un-warped frame."""
    cx, rh = L["cx"], L["rh"]
    head = (cx - rh, L["top"], cx + rh, L["neck"])
    arm = L["sw"] * 0.45 + (abs(L["swing"]) * L["sw"] * 0.4 if L["view"] == "side" else 0.0)
    upper = (cx - L["sw"] - arm, L["neck"], cx + L["sw"] + arm, L["hip"])
    spread = L["hw"] + abs(L["stride"]) * L["hw"] * 0.8
    legs = (cx - spread, L["hip"], cx + spread, L["foot"])
    return head, upper, legs


def draw_person(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    """Draw a person seen from the front, the back or the side (facing right)."""
    view, cx, rh = L["view"], L["cx"], L["rh"]
    neck, hip, foot, sw, hw = L["neck"], L["hip"], L["foot"], L["sw"], L["hw"]
    if view == "side" and a["bag"] == "backpack":  # sticks out behind (left) of the back
        d.rectangle((cx - sw - sw * 0.9, neck + rh * 0.4, cx - sw * 0.7, hip - rh * 0.6),
                    fill=a["bag_color"])
    _person_legs(d, a, L)
    _person_arms(d, a, L, behind=True)
    torso = [(cx - sw, neck), (cx + sw, neck), (cx + hw, hip), (cx - hw, hip)]
    d.polygon(torso, fill=a["top"])
    _person_top_pattern(d, a, L)
    _person_bag(d, a, L)
    _person_arms(d, a, L, behind=False)
    _person_head(d, a, L)


def _person_legs(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    cx, hip, foot, hw = L["cx"], L["hip"], L["foot"], L["hw"]
    leg_w = hw * (0.85 if L["view"] == "side" else 0.9)
    shoe = (foot - hip) * 0.09
    knee = hip + (foot - hip) * (0.42 if a["shorts"] else 1.0)
    for side in (-1.0, 1.0):
        if L["view"] == "side":
            dx = side * L["stride"] * hw * 0.8
            x0, x1 = cx - leg_w * 0.5, cx + leg_w * 0.5
        else:
            dx = side * hw * 0.08
            x0, x1 = (cx - hw, cx - hw * 0.08) if side < 0 else (cx + hw * 0.08, cx + hw)
        poly = [(x0, hip), (x1, hip), (x1 + dx, foot - shoe), (x0 + dx, foot - shoe)]
        d.polygon(poly, fill=a["skin"])
        d.polygon(_band(x0, x1, x0 + dx, x1 + dx, hip, foot - shoe, hip, knee), fill=a["trousers"])
        toe = leg_w * 0.35 if L["view"] == "side" else 0.0
        d.rectangle((x0 + dx, foot - shoe, x1 + dx + toe, foot), fill=a["shoes"])


def _person_arms(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any], behind: bool) -> None:
    """Side view: one arm swings in front of the torso; front/back: arms at both sides."""
    cx, neck, hip, sw = L["cx"], L["neck"], L["hip"], L["sw"]
    if (L["view"] == "side") != (not behind):
        return
    aw = max(sw * 0.38, 1.5) if L["view"] != "side" else max(sw * 0.6, 1.5)
    end_y = hip + (hip - neck) * 0.12
    sides = (0.0,) if L["view"] == "side" else (-1.0, 1.0)
    for side in sides:
        x = cx + side * (sw + aw * 0.45)
        ex = x + (L["swing"] * sw * 0.7 if L["view"] == "side" else side * aw * 0.3)
        sleeve_end = neck + (end_y - neck) * (0.92 if a["long_sleeves"] else 0.35)
        arm = [(x - aw * 0.5, neck + 1), (x + aw * 0.5, neck + 1), (ex + aw * 0.45, end_y), (ex - aw * 0.45, end_y)]
        d.polygon(arm, fill=a["skin"])
        d.polygon(_band(x - aw * 0.5, x + aw * 0.5, ex - aw * 0.45, ex + aw * 0.45, neck + 1, end_y,
                        neck + 1, sleeve_end), fill=a["top"])
        if a["bag"] == "hand" and side >= 0:
            d.rectangle((ex - aw, end_y, ex + aw, end_y + (hip - neck) * 0.3), fill=a["bag_color"])


def _person_top_pattern(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    """Stripes and two-tone show from every side; a logo or an open jacket only from the front."""
    cx, neck, hip, sw, hw, view = L["cx"], L["neck"], L["hip"], L["sw"], L["hw"], L["view"]
    trap = (cx - sw, cx + sw, cx - hw, cx + hw, neck, hip)
    pattern, c2 = a["pattern"], a["top2"]
    if pattern == "stripes":
        n, span = a["stripes"], hip - neck
        for i in range(n):
            ya = neck + span * (i + 0.5) / (n + 0.5)
            d.polygon(_band(*trap, ya, ya + span * 0.45 / (n + 0.5)), fill=c2)
    elif pattern == "two_tone":
        d.polygon(_band(*trap, neck + (hip - neck) * 0.5, hip), fill=c2)
    elif pattern == "logo" and view == "front":
        s = sw * 0.45
        my = neck + (hip - neck) * 0.35
        d.rectangle((cx - s, my - s * 0.8, cx + s, my + s * 0.8), fill=c2)
    elif pattern == "jacket" and view == "front":
        d.polygon(_band(cx - sw * 0.3, cx + sw * 0.3, cx - hw * 0.3, cx + hw * 0.3, neck, hip, neck, hip), fill=c2)
    elif pattern == "jacket":
        d.polygon(_band(*trap, neck, neck + (hip - neck) * 0.2), fill=c2)  # collar / hood


def _person_bag(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    cx, neck, hip, sw, view, col = L["cx"], L["neck"], L["hip"], L["sw"], L["view"], a["bag_color"]
    strap = max(sw * 0.14, 1.0)
    if a["bag"] == "backpack":
        if view == "back":
            d.rectangle((cx - sw * 0.75, neck + (hip - neck) * 0.08, cx + sw * 0.75, hip - (hip - neck) * 0.1), fill=col)
        elif view == "front":
            for s in (-1, 1):
                x = cx + s * sw * 0.55
                d.rectangle((x - strap, neck, x + strap, neck + (hip - neck) * 0.7), fill=col)
        else:
            d.rectangle((cx - sw - strap, neck, cx - sw + strap * 2, neck + (hip - neck) * 0.6), fill=col)
    elif a["bag"] == "shoulder":
        d.line([(cx - sw * 0.9, neck), (cx + sw * 0.8, hip)], fill=col, width=max(int(strap * 1.6), 1))
        side = 1.0 if view != "back" else -1.0
        bx = cx + side * sw * 0.95
        d.rectangle((bx - sw * 0.45, hip - (hip - neck) * 0.2, bx + sw * 0.45, hip + (hip - neck) * 0.22), fill=col)


def _person_head(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    cx, cy, rh, view, hair = L["cx"], L["head_cy"], L["rh"], L["view"], a["hair"]
    if a["long_hair"] and view != "front":
        d.rectangle((cx - rh * (1.05 if view == "back" else 0.9), cy, cx + rh * (1.05 if view == "back" else 0.1),
                     L["neck"] + rh * 1.2), fill=hair)
    d.rectangle((cx - rh * 0.35, cy, cx + rh * 0.35, L["neck"] + 1), fill=a["skin"])  # neck
    d.ellipse((cx - rh, cy - rh, cx + rh, cy + rh), fill=a["skin"] if view != "back" else hair)
    if view == "front":
        d.chord((cx - rh, cy - rh * 1.05, cx + rh, cy + rh * 0.3), 180, 360, fill=hair)
        if a["long_hair"]:
            for s in (-1, 1):
                d.rectangle((cx + s * rh * 0.75 - rh * 0.28, cy - rh * 0.2, cx + s * rh * 0.75 + rh * 0.28,
                             L["neck"] + rh), fill=hair)
    elif view == "side":
        d.pieslice((cx - rh, cy - rh * 1.05, cx + rh, cy + rh), 150, 320, fill=hair)
    if a["hat"] is not None:
        d.chord((cx - rh * 1.05, cy - rh * 1.15, cx + rh * 1.05, cy + rh * 0.2), 180, 360, fill=a["hat"])
        if view == "side":
            d.rectangle((cx, cy - rh * 0.25, cx + rh * 1.5, cy - rh * 0.05), fill=a["hat"])


# --------------------------------------------------------------------------- vehicle

_VEHICLE_SHAPES = {  # side-view proportions: height/length, cabin start/end, cabin height share
    "sedan": (0.36, 0.25, 0.72, 0.45), "hatchback": (0.40, 0.22, 0.86, 0.48),
    "suv": (0.48, 0.18, 0.92, 0.46), "van": (0.58, 0.06, 0.97, 0.55),
    "pickup": (0.44, 0.35, 0.62, 0.48), "truck": (0.62, 0.02, 0.28, 0.55),
}


def vehicle_identity(rng: np.random.Generator) -> dict[str, Any]:
    """Body shape and length, paint, markings (stripe, two-tone, roof), wheel style."""
    paint = CAR_PAINTS[rng.integers(len(CAR_PAINTS))] if rng.random() < 0.6 else _cloth_color(rng)
    return {
        "shape": str(rng.choice(list(_VEHICLE_SHAPES))),
        "length": rng.uniform(0.82, 0.97),
        "paint": _shade(paint, rng.uniform(0.88, 1.1)),
        "paint2": _cloth_color(rng),
        "marking": str(rng.choice(["none", "side_stripe", "racing", "two_tone", "roof"])),
        "stripe_y": rng.uniform(0.25, 0.7),
        "window": hsv(0.6, rng.uniform(0.05, 0.3), rng.uniform(0.12, 0.5)),
        "rim": hsv(0.12, rng.uniform(0, 0.6), float(rng.choice([0.25, 0.75, 0.95]))),
        "wheel": str(rng.choice(["solid", "spokes", "ring"])),
        "wheel_size": rng.uniform(0.11, 0.16),
        "rack": bool(rng.random() < 0.25),
        "cargo": _cloth_color(rng),
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


# --------------------------------------------------------------------------- animal

def animal_identity(rng: np.random.Generator) -> dict[str, Any]:
    """Fur colour, build, and an individual coat texture (the stripes/spots barcode)."""
    coat = str(rng.choice(["stripes", "spots", "patches", "plain"], p=[0.35, 0.35, 0.2, 0.1]))
    n = int(rng.integers(5, 10)) if coat != "patches" else int(rng.integers(2, 4))
    return {
        "fur": _shade(FUR_COLORS[rng.integers(len(FUR_COLORS))], rng.uniform(0.85, 1.12)),
        "mark": _shade(FUR_COLORS[rng.integers(len(FUR_COLORS))], rng.uniform(0.4, 0.8)),
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
        d.rectangle((x - lw / 2, cy, x + lw / 2, cy + bb + leg), fill=_shade(fur, 0.85 if i in (1, 2) else 1.0))
        d.rectangle((x - lw / 2, cy + bb + leg * 0.85, x + lw / 2, cy + bb + leg), fill=_shade(mark, 0.7))
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
            d.polygon(_ellipse_band(cx, cy - bb * 0.02, ba * 0.98, bb * 0.95, x, x + s * ba * 0.55), fill=a["mark"])
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
        d.ellipse((hx + hr * 0.3, hy - hr * 0.1, hx + hr * 1.5, hy + hr * 0.6), fill=_shade(fur, 0.8))
    else:
        d.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=fur)
        d.ellipse((hx - hr * 0.4, hy, hx + hr * 0.4, hy + hr * 0.7), fill=_shade(fur, 0.75))
    d.ellipse((hx - hr * 0.15, hy - hr * 0.35, hx + hr * 0.15, hy - hr * 0.05), fill=(10, 10, 10))


# --------------------------------------------------------------------------- categories

@dataclass(frozen=True)
class CategorySpec:
    """One category: how to draw an identity's attributes, lay it out, draw it, and name
    its three part boxes (top to bottom). A new category is one more entry here."""

    sample: Callable[[np.random.Generator], dict[str, Any]]
    layout: Callable[[dict[str, Any], str, np.ndarray, int, int], dict[str, Any]]
    parts: Callable[[dict[str, Any]], tuple[Box, Box, Box]]
    draw: Callable[[ImageDraw.ImageDraw, dict[str, Any], dict[str, Any]], None]
    part_names: tuple[str, str, str]


#: Known categories; the index in this mapping is the category index used in seeds and
#: pids, so adding a category at the end never changes existing worlds.
CATEGORIES: dict[str, CategorySpec] = {
    "person": CategorySpec(person_identity, person_layout, person_parts, draw_person, ("head", "upper", "legs")),
    "vehicle": CategorySpec(vehicle_identity, vehicle_layout, vehicle_parts, draw_vehicle, ("roof", "body", "wheels")),
    "animal": CategorySpec(animal_identity, animal_layout, animal_parts, draw_animal, ("head", "body", "legs")),
}
_CATEGORY_INDEX = {name: i for i, name in enumerate(CATEGORIES)}


# --------------------------------------------------------------------------- cameras

@dataclass(frozen=True)
class Camera:
    """What one camera does to every image it takes (viewpoint, light, background, optics)."""

    index: int
    main_view: str
    scale: float
    angle: float
    shift: tuple[float, float]
    mirror: bool
    light: np.ndarray        # (H, W, 3) float32 multiplier: brightness, colour cast, shading
    offset: float            # added after `light` (haze / black level)
    background: np.ndarray   # (H, W * 3 // 2, 3) uint8, cropped at a per-image offset
    blur: float
    noise: float
    occluder: tuple[float, Color] | None  # (probability, colour) of a pole in front


@dataclass(frozen=True)
class Shot:
    """One image's draw of the camera's per-image jitter."""

    view: str
    pose: np.ndarray
    matrix: np.ndarray       # 2x3 affine, un-warped frame -> image (pixels)
    brightness: float
    bg_x: int
    occluder_x: float | None


def make_camera(seed: int, index: int, height: int, width: int) -> Camera:
    """Camera `index` of world `seed`: fixed viewpoint bias, light, background and optics."""
    rng = np.random.default_rng([seed, _CAMERA_STREAM, index])
    main_view = VIEWS[(index + seed) % len(VIEWS)]
    cast = rng.uniform(0.78, 1.2, 3)
    gain = rng.uniform(0.6, 1.25) * cast / cast.mean()
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    lx, ly = rng.uniform(-1, 1, 2)
    shading = 1.0 + 0.25 * (lx * (xs / width - 0.5) + ly * (ys / height - 0.5))
    light = (shading[..., None] * gain.astype(np.float32)[None, None, :]).astype(np.float32)
    occluder = (float(rng.uniform(0.2, 0.5)), hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.2, 0.7))) \
        if rng.random() < 0.5 else None
    return Camera(
        index=index, main_view=main_view, scale=float(rng.uniform(0.8, 1.05)),
        angle=float(rng.uniform(-6, 6)), shift=(float(rng.uniform(-0.07, 0.07)), float(rng.uniform(-0.05, 0.09))),
        mirror=bool(rng.random() < 0.5), light=light, offset=float(rng.uniform(-10, 25)),
        background=make_background(rng, height, width * 3 // 2),
        blur=float(rng.choice([0.0, 0.0, 0.6, 1.0, 1.4])), noise=float(rng.uniform(2, 9)), occluder=occluder,
    )


def make_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A camera's scene: a floor/wall split, pillars, or a gradient, over smooth clutter."""
    base = np.array(hsv(rng.random(), rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.8)), np.float32)
    other = np.array(hsv(rng.random(), rng.uniform(0.05, 0.4), rng.uniform(0.2, 0.85)), np.float32)
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    kind = rng.integers(3)
    if kind == 0:  # wall above, floor below a horizon
        img = np.where(ys < rng.uniform(0.5, 0.75), base, other) + np.zeros_like(xs)
    elif kind == 1:  # pillars / shop fronts
        period = rng.uniform(0.15, 0.4)
        img = np.where((xs / period) % 1.0 < rng.uniform(0.3, 0.6), base, other) + np.zeros_like(ys)
    else:
        img = base * (1 - ys) + other * ys + np.zeros_like(xs)
    coarse = rng.normal(0, 1, (max(height // 10, 2), max(width // 10, 2), 3)) * [1.0, 0.25, 0.25]
    coarse = (coarse @ np.array([[1, 1, 1], [1, -1, 0], [0, 1, -1]]) * 22).astype(np.float32)  # mostly luminance
    clutter = np.asarray(Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize(
        (width, height), Image.BICUBIC), np.float32) - 128
    fine = rng.normal(0, 4, (height, width, 3)).astype(np.float32)
    return np.clip(img + clutter + fine, 0, 255).astype(np.uint8)


def make_shot(rng: np.random.Generator, camera: Camera, height: int, width: int) -> Shot:
    """The per-image jitter: view (mostly the camera's), pose, placement, light."""
    r = rng.random()
    view = camera.main_view if r < 0.7 else VIEWS[(VIEWS.index(camera.main_view) + (1 if r < 0.85 else 2)) % 3]
    pose = rng.random(4)
    scale = camera.scale * rng.uniform(0.93, 1.07)
    angle = math.radians(camera.angle + rng.uniform(-2.5, 2.5))
    dx = (camera.shift[0] + rng.uniform(-0.04, 0.04)) * width
    dy = (camera.shift[1] + rng.uniform(-0.03, 0.03)) * height
    mirror = camera.mirror != bool(rng.random() < 0.25)
    brightness = float(rng.uniform(0.88, 1.12))
    bg_x = int(rng.integers(0, camera.background.shape[1] - width + 1))
    occ = camera.occluder
    occluder_x = float(rng.uniform(0.05, 0.95)) if occ is not None and rng.random() < occ[0] else None
    return Shot(view, pose, _affine(scale, angle, mirror, dx, dy, width, height), brightness, bg_x, occluder_x)


def _affine(scale: float, angle: float, mirror: bool, dx: float, dy: float, w: int, h: int) -> np.ndarray:
    """2x3 matrix: mirror, rotate and scale about the image centre, then shift."""
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    m = np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if mirror else 1.0, 1.0])
    centre = np.array([w / 2, h / 2])
    t = centre + np.array([dx, dy]) - m @ centre
    return np.column_stack([m, t])


def warp_boxes(boxes: Sequence[Box], matrix: np.ndarray, w: int, h: int) -> np.ndarray:
    """Boxes (pixels, un-warped) -> the bounding boxes of their warped corners, as
    fractions [x0, y0, x1, y1] of the image, clipped to [0, 1]."""
    out = np.empty((len(boxes), 4), np.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        pts = np.array([[x0, x1, x1, x0], [y0, y0, y1, y1], [1, 1, 1, 1]], np.float64)
        q = matrix @ pts
        out[i] = (q[0].min() / w, q[1].min() / h, q[0].max() / w, q[1].max() / h)
    return np.clip(out, 0.0, 1.0)


# --------------------------------------------------------------------------- rendering

def render_image(spec: CategorySpec, attrs: dict[str, Any], camera: Camera, shot: Shot,
                 rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Draw the identity un-warped, warp it through the shot, composite it on the
    camera's background, then apply occluder, blur, light and sensor noise."""
    sprite = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    spec.draw(ImageDraw.Draw(sprite), attrs, spec.layout(attrs, shot.view, shot.pose, width, height))
    inv = np.linalg.inv(np.vstack([shot.matrix, [0, 0, 1]]))[:2].ravel()
    sprite = sprite.transform((width, height), Image.AFFINE, tuple(inv), resample=Image.BILINEAR)
    bg = camera.background[:, shot.bg_x:shot.bg_x + width]
    img = Image.fromarray(np.ascontiguousarray(bg))
    img.paste(sprite, (0, 0), sprite)
    if shot.occluder_x is not None:
        x = shot.occluder_x * width
        ImageDraw.Draw(img).rectangle((x, 0, x + width * 0.09, height), fill=camera.occluder[1])  # type: ignore[index]
    if camera.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(camera.blur))
    return _photometric(img, camera, shot, rng)


def _photometric(img: Image.Image, camera: Camera, shot: Shot, rng: np.random.Generator) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32) * camera.light
    arr *= shot.brightness
    arr += camera.offset
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * camera.noise
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8))


# --------------------------------------------------------------------------- dataset

class SyntheticWorld(Dataset):
    """Identities of several categories rendered under several cameras; no files.

    Train identities are 0..identities-1 of each category not held out; test identities
    (query/gallery) are the next `test_identities`, so the two never share attributes or
    pids (pid = category_index * 100000 + identity, category_index from `CATEGORIES`).
    Image i of an identity is taken by camera i % cameras; an identity's query images are
    its images 0 and 1 (cameras 0 and 1), its gallery images the rest.

    extras: "render_key" (category_index, identity, image) for `load_image`, and "parts":
    a float32 (3, 4) array of part boxes [x0, y0, x1, y1] as fractions of the image,
    after the camera warp (bounding boxes of the warped boxes, clipped to [0, 1]), in the
    order of `CATEGORIES[category].part_names` (person: head, upper, legs).
    """

    def __init__(
        self,
        seed: int = 0,
        categories: list[str] = ["person", "vehicle"],  # noqa: B006 - YAML default, never mutated
        identities: int = 40,
        test_identities: int = 20,
        cameras: int = 4,
        images_per_identity: int = 8,
        render_size: list[int] = [128, 64],  # noqa: B006
        held_out_categories: list[str] = [],  # noqa: B006
    ) -> None:
        _validate(categories, identities, test_identities, cameras, images_per_identity, render_size,
                  held_out_categories)
        self.seed = int(seed)
        self.categories = list(categories)
        self.identities = int(identities)
        self.test_identities = int(test_identities)
        self.num_cameras = int(cameras)
        self.images_per_identity = int(images_per_identity)
        self.height, self.width = (int(v) for v in render_size)
        self.held_out_categories = list(held_out_categories)
        self._cameras: list[Camera] | None = None
        self._records: dict[str, list[Record]] = {}

    # -- listing

    def records(self, split: str) -> list[Record]:
        if split not in self.splits:
            raise ValueError(f"SyntheticWorld: unknown split '{split}'; valid splits: {', '.join(self.splits)}")
        if split not in self._records:
            self._records[split] = self._list(split)
        return self._records[split]

    def _list(self, split: str) -> list[Record]:
        out: list[Record] = []
        for name in self.categories:
            if split == "train" and name in self.held_out_categories:
                continue
            cat = _CATEGORY_INDEX[name]
            ids = range(self.identities) if split == "train" else \
                range(self.identities, self.identities + self.test_identities)
            for identity in ids:
                for image in range(self.images_per_identity):
                    image_split = "train" if split == "train" else ("query" if image < 2 else "gallery")
                    if image_split == split:
                        out.append(self._record(name, cat, identity, image, split))
        return out

    def _record(self, name: str, cat: int, identity: int, image: int, split: str) -> Record:
        spec = CATEGORIES[name]
        shot, _ = self._shot(cat, identity, image)
        layout = spec.layout(self.attributes(cat, identity), shot.view, shot.pose, self.width, self.height)
        parts = warp_boxes(spec.parts(layout), shot.matrix, self.width, self.height)
        return Record(path=None, pid=cat * PID_STRIDE + identity, camid=image % self.num_cameras,
                      category=name, domain="synthetic", split=split,
                      extras={"render_key": (cat, identity, image), "parts": parts})

    # -- rendering

    def load_image(self, record: Record) -> Image.Image:
        key = record.extras.get("render_key")
        if key is None:
            raise ValueError(f"SyntheticWorld: record of pid {record.pid} has no extras['render_key']; "
                             "it was not listed by a SyntheticWorld")
        return self.render(*key)

    def render(self, category_index: int, identity: int, image: int) -> Image.Image:
        """Image `image` of `identity` (its camera is image % cameras)."""
        spec = CATEGORIES[_CATEGORY_NAMES[category_index]]
        shot, rng = self._shot(category_index, identity, image)
        camera = self.cameras[image % self.num_cameras]
        return render_image(spec, self.attributes(category_index, identity), camera, shot, rng,
                            self.height, self.width)

    @property
    def cameras(self) -> list[Camera]:
        """Built on first use (a few small arrays), so listing records stays cheap."""
        if self._cameras is None:
            self._cameras = [make_camera(self.seed, c, self.height, self.width) for c in range(self.num_cameras)]
        return self._cameras

    def attributes(self, category_index: int, identity: int) -> dict[str, Any]:
        """The identity's attributes: stable for (seed, category, identity)."""
        return _identity_attributes(self.seed, category_index, identity)

    def _shot(self, cat: int, identity: int, image: int) -> tuple[Shot, np.random.Generator]:
        """The image's jitter and the generator, positioned after it, for its noise."""
        rng = np.random.default_rng([self.seed, cat, identity, image])
        camera = self.cameras[image % self.num_cameras]
        return make_shot(rng, camera, self.height, self.width), rng

    def __getstate__(self) -> dict[str, Any]:
        """DataLoader workers rebuild cameras instead of receiving them pickled."""
        state = dict(self.__dict__)
        state["_cameras"] = None
        return state


_CATEGORY_NAMES = list(CATEGORIES)


@lru_cache(maxsize=4096)
def _identity_attributes(seed: int, category_index: int, identity: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, category_index, identity])
    return CATEGORIES[_CATEGORY_NAMES[category_index]].sample(rng)


def _validate(categories: list[str], identities: int, test_identities: int, cameras: int,
              images_per_identity: int, render_size: list[int], held_out: list[str]) -> None:
    """Fail at construction with the key at fault and what would be valid."""
    known = ", ".join(CATEGORIES)
    if not categories:
        raise ValueError(f"SyntheticWorld: 'categories' is empty; choose from: {known}")
    for key, names in (("categories", categories), ("held_out_categories", held_out)):
        for name in names:
            if name not in CATEGORIES:
                raise ValueError(f"SyntheticWorld: unknown category '{name}' in '{key}'; known categories: {known}")
    if len(set(categories)) != len(categories):
        raise ValueError(f"SyntheticWorld: 'categories' lists a category twice: {categories}")
    for name in held_out:
        if name not in categories:
            raise ValueError(f"SyntheticWorld: held-out category '{name}' is not in 'categories' ({categories})")
    if set(held_out) == set(categories):
        raise ValueError("SyntheticWorld: 'held_out_categories' holds every category, leaving no training data")
    if identities < 1 or test_identities < 1 or identities + test_identities >= PID_STRIDE:
        raise ValueError(f"SyntheticWorld: 'identities' and 'test_identities' must be >= 1 and sum below "
                         f"{PID_STRIDE}; got {identities} and {test_identities}")
    if cameras < 2:
        raise ValueError(f"SyntheticWorld: 'cameras' must be >= 2 (ReID matches across cameras); got {cameras}")
    need = 4 if cameras == 2 else 3
    if images_per_identity < need:
        raise ValueError(f"SyntheticWorld: 'images_per_identity' must be >= {need} with {cameras} cameras, so "
                         f"each query (images 0, 1) has a gallery match in another camera; got {images_per_identity}")
    if len(render_size) != 2 or min(render_size) < 16:
        raise ValueError(f"SyntheticWorld: 'render_size' must be [height, width], each >= 16; got {render_size}")


def preview_grid(world: SyntheticWorld, n_identities: int = 6, split: str = "train") -> Image.Image:
    """Rows = the first identities of each category, columns = cameras: a visual check
    that identities differ and cameras change the view. Held-out categories show test
    identities."""
    h, w, pad = world.height, world.width, 2
    rows = []
    for name in world.categories:
        first = world.identities if (split != "train" or name in world.held_out_categories) else 0
        rows.extend((_CATEGORY_INDEX[name], first + i) for i in range(n_identities))
    cols = min(world.num_cameras, world.images_per_identity)
    grid = Image.new("RGB", (cols * (w + pad) + pad, len(rows) * (h + pad) + pad), (255, 255, 255))
    for r, (cat, identity) in enumerate(rows):
        for c in range(cols):
            grid.paste(world.render(cat, identity, c), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid
