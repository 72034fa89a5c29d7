"""People: identity in body proportions, skin, hair and bag; clothes on top, which change
between outfits when the world has clothes changes (Instruct-ReID's clothes-changing and
clothes-template tasks). Part boxes: head, upper body, legs (MUVA)."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from core.data.synthetic.drawing import Box, article, band, cloth_color, color_name, hsv, shade

SKIN_TONES = ((255, 224, 196), (241, 194, 150), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 30))
HAIR_COLORS = ((20, 16, 14), (70, 44, 26), (120, 80, 40), (220, 190, 120),
               (160, 60, 30), (170, 170, 170), (60, 90, 200), (200, 60, 140))
HAIR_NAMES = ("black", "dark brown", "brown", "blond", "red", "grey", "blue", "pink")
#: What an outfit is: the keys a clothes change redraws; everything else is the body.
OUTFIT_KEYS = ("top", "top2", "pattern", "stripes", "long_sleeves", "trousers", "shorts", "shoes", "hat")


def person_identity(rng: np.random.Generator) -> dict[str, Any]:
    """What makes one person recognisable: proportions, skin, hair, clothes, bag."""
    top = cloth_color(rng)
    return {
        "height": rng.uniform(0.78, 0.93),
        "head": rng.uniform(0.065, 0.085),
        "shoulder": rng.uniform(0.17, 0.25),
        "hip": rng.uniform(0.72, 0.95),
        "torso": rng.uniform(0.47, 0.56),
        "skin": shade(SKIN_TONES[rng.integers(len(SKIN_TONES))], rng.uniform(0.9, 1.08)),
        "hair": HAIR_COLORS[rng.integers(len(HAIR_COLORS))],
        "long_hair": bool(rng.random() < 0.35),
        "hat": cloth_color(rng) if rng.random() < 0.2 else None,
        "top": top,
        "top2": cloth_color(rng),
        "pattern": str(rng.choice(["plain", "stripes", "two_tone", "logo", "jacket"])),
        "stripes": int(rng.integers(2, 5)),
        "long_sleeves": bool(rng.random() < 0.55),
        "trousers": cloth_color(rng),
        "shorts": bool(rng.random() < 0.25),
        "shoes": hsv(0, 0, float(rng.choice([0.1, 0.3, 0.95]))),
        "bag": str(rng.choice(["none", "backpack", "shoulder", "hand"], p=[0.4, 0.3, 0.2, 0.1])),
        "bag_color": cloth_color(rng),
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
        d.polygon(band(x0, x1, x0 + dx, x1 + dx, hip, foot - shoe, hip, knee), fill=a["trousers"])
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
        d.polygon(band(x - aw * 0.5, x + aw * 0.5, ex - aw * 0.45, ex + aw * 0.45, neck + 1, end_y,
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
            d.polygon(band(*trap, ya, ya + span * 0.45 / (n + 0.5)), fill=c2)
    elif pattern == "two_tone":
        d.polygon(band(*trap, neck + (hip - neck) * 0.5, hip), fill=c2)
    elif pattern == "logo" and view == "front":
        s = sw * 0.45
        my = neck + (hip - neck) * 0.35
        d.rectangle((cx - s, my - s * 0.8, cx + s, my + s * 0.8), fill=c2)
    elif pattern == "jacket" and view == "front":
        d.polygon(band(cx - sw * 0.3, cx + sw * 0.3, cx - hw * 0.3, cx + hw * 0.3, neck, hip, neck, hip), fill=c2)
    elif pattern == "jacket":
        d.polygon(band(*trap, neck, neck + (hip - neck) * 0.2), fill=c2)  # collar / hood


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




# --------------------------------------------------------------------------- outfits

def sample_outfit(rng: np.random.Generator) -> dict[str, Any]:
    """A fresh outfit (the `OUTFIT_KEYS`), for clothes changes; outfit 0 is the one
    `person_identity` drew, so a world without clothes changes renders as before."""
    return {
        "top": cloth_color(rng),
        "top2": cloth_color(rng),
        "pattern": str(rng.choice(["plain", "stripes", "two_tone", "logo", "jacket"])),
        "stripes": int(rng.integers(2, 5)),
        "long_sleeves": bool(rng.random() < 0.55),
        "trousers": cloth_color(rng),
        "shorts": bool(rng.random() < 0.25),
        "shoes": hsv(0, 0, float(rng.choice([0.1, 0.3, 0.95]))),
        "hat": cloth_color(rng) if rng.random() < 0.2 else None,
    }


#: Body proportions of the clothes template: an average body, so the template shows the
#: outfit and nothing of the wearer.
_TEMPLATE_BODY = {"height": 0.9, "head": 0.075, "shoulder": 0.23, "hip": 0.85, "torso": 0.52}


def outfit_template(a: dict[str, Any], width: int, height: int,
                    background: tuple[int, int, int] = (235, 235, 235)) -> Image.Image:
    """The outfit of attributes `a` alone, front view, on a plain background: skin and
    hair are painted in the background colour, the bag (a body attribute) is left out."""
    t = {**a, **_TEMPLATE_BODY, "skin": background, "hair": background, "long_hair": False, "bag": "none"}
    img = Image.new("RGB", (width, height), background)
    draw_person(ImageDraw.Draw(img), t, person_layout(t, "front", np.full(4, 0.5), width, height))
    return img


# --------------------------------------------------------------------------- words

_PATTERN_WORDS = {"plain": "plain", "stripes": "striped", "two_tone": "two-tone", "logo": "logo", "jacket": "jacket"}
_BAG_WORDS = {"none": "none", "backpack": "backpack", "shoulder": "shoulder bag", "hand": "handbag"}


def person_attributes(a: dict[str, Any]) -> dict[str, str]:
    """The words for what the renderer draws (colour names of the painted colours)."""
    return {
        "height": "tall" if a["height"] > 0.885 else ("short" if a["height"] < 0.825 else "medium"),
        "hair": HAIR_NAMES[HAIR_COLORS.index(a["hair"])],
        "hair_length": "long" if a["long_hair"] else "short",
        "hat": color_name(a["hat"]) if a["hat"] is not None else "none",
        "top": color_name(a["top"]),
        "top_pattern": _PATTERN_WORDS[a["pattern"]],
        "top2": color_name(a["top2"]) if a["pattern"] != "plain" else "none",
        "sleeves": "long" if a["long_sleeves"] else "short",
        "bottom": "shorts" if a["shorts"] else "trousers",
        "bottom_color": color_name(a["trousers"]),
        "shoes": color_name(a["shoes"]),
        "bag": _BAG_WORDS[a["bag"]],
        "bag_color": color_name(a["bag_color"]) if a["bag"] != "none" else "none",
    }


def person_caption(t: dict[str, str]) -> str:
    """e.g. 'a tall person with long brown hair, wearing a red striped top with white
    stripes and long sleeves, blue trousers and black shoes, carrying a green backpack'."""
    who = ("a person" if t["height"] == "medium" else f"{article(t['height'])} person")
    hair = f"with {t['hair_length']} {t['hair']} hair" + (f" and {article(t['hat'])} hat" if t["hat"] != "none" else "")
    sleeves = f"{t['sleeves']} sleeves"
    pattern, c, c2 = t["top_pattern"], t["top"], t["top2"]
    if pattern == "striped":
        top = f"{article(c)} top with {c2} stripes and {sleeves}"
    elif pattern == "two-tone" and c2 != c:
        top = f"{article(c)} and {c2} top with {sleeves}"
    elif pattern == "logo":
        top = f"{article(c)} top with {article(c2)} logo and {sleeves}"
    elif pattern == "jacket":
        top = f"{article(c)} jacket with {sleeves} over {article(c2)} shirt"
    else:
        top = f"{article(c)} top with {sleeves}"
    text = f"{who} {hair}, wearing {top}, {t['bottom_color']} {t['bottom']} and {t['shoes']} shoes"
    if t["bag"] != "none":
        text += f", carrying {article(t['bag_color'])} {t['bag']}"
    return text
