"""Ships: identity in hull shape and colours, superstructure (decks, position), funnel
livery and hull markings, as in vessel re-identification. Part boxes: superstructure,
hull, waterline."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import ImageDraw

from core.data.synthetic.drawing import Box, article, cloth_color, color_name, hsv, shade

SHIP_PAINTS = ((25, 40, 80), (20, 20, 22), (150, 25, 25), (25, 70, 45), (235, 235, 230), (130, 135, 140),
               (215, 100, 25), (40, 90, 160))
BOOT_TOPS = ((150, 30, 30), (25, 25, 25), (40, 90, 60), (70, 80, 100))
WATER = (38, 78, 104)
_WINDOW = (30, 40, 55)

#: kind: hull height / length, superstructure start and end (fraction of the length from
#: the stern), decks, bow rake (fraction of the length).
SHIP_KINDS = {
    "cargo": (0.15, 0.03, 0.2, 4, 0.1), "tanker": (0.13, 0.03, 0.17, 3, 0.08),
    "ferry": (0.16, 0.1, 0.86, 3, 0.12), "tug": (0.24, 0.32, 0.68, 2, 0.06),
    "yacht": (0.13, 0.25, 0.72, 2, 0.22), "fishing": (0.2, 0.55, 0.8, 1, 0.1),
}


def ship_identity(rng: np.random.Generator) -> dict[str, Any]:
    kind = str(rng.choice(list(SHIP_KINDS)))
    hull = SHIP_PAINTS[rng.integers(len(SHIP_PAINTS))] if rng.random() < 0.7 else cloth_color(rng)
    sup = (235, 235, 230) if rng.random() < 0.55 else cloth_color(rng)
    return {
        "kind": kind,
        "length": rng.uniform(0.84, 0.97),
        "hull": shade(hull, rng.uniform(0.9, 1.1)),
        "boot": BOOT_TOPS[rng.integers(len(BOOT_TOPS))],
        "super": sup,
        "decks": max(1, SHIP_KINDS[kind][3] + int(rng.integers(-1, 2))),
        "super_shift": rng.uniform(-0.05, 0.05),
        "funnel": cloth_color(rng),
        "funnel_band": cloth_color(rng),
        "funnels": int(rng.choice([0, 1, 1, 1, 2])) if kind != "yacht" else 0,
        "marking": str(rng.choice(["none", "stripe", "bow_flash", "number"])),
        "mark": cloth_color(rng),
        "code": rng.random(5) < 0.5,
        "containers": [cloth_color(rng) for _ in range(12)],
        "mast": bool(rng.random() < 0.6),
        "portholes": bool(rng.random() < 0.5),
    }


def ship_layout(a: dict[str, Any], view: str, pose: np.ndarray, w: int, h: int) -> dict[str, Any]:
    ratio, s0, s1, _, rake = SHIP_KINDS[a["kind"]]
    if view == "side":
        length = w * a["length"]
        hull_h = length * ratio
        deck_h = length * 0.065
        x0 = w * 0.5 - length / 2
        box = (x0, 0.0, x0 + length, 0.0)
    else:
        length = w * (0.5 + 0.1 * ratio / 0.2) * (0.9 + 0.1 * a["length"])
        hull_h = length * 0.4
        deck_h = length * 0.13
        box = (w * 0.5 - length / 2, 0.0, w * 0.5 + length / 2, 0.0)
    waterline = h * (0.6 + (pose[2] - 0.5) * 0.04)
    deck = waterline - hull_h
    top = deck - deck_h * (a["decks"] + 0.9)
    return {"view": view, "x0": box[0], "x1": box[2], "deck": deck, "waterline": waterline, "hull_h": hull_h,
            "deck_h": deck_h, "top": top, "s0": s0 + a["super_shift"], "s1": s1 + a["super_shift"], "rake": rake,
            "roll": (pose[0] - 0.5) * 0.1}


def ship_parts(L: dict[str, Any]) -> tuple[Box, Box, Box]:
    x0, x1, ln = L["x0"], L["x1"], L["x1"] - L["x0"]
    if L["view"] == "side":
        sx0, sx1 = x0 + ln * L["s0"], x0 + ln * L["s1"]
    else:
        sx0, sx1 = x0 + ln * 0.1, x1 - ln * 0.1
    sup = (sx0, L["top"], sx1, L["deck"])
    hull = (x0, L["deck"], x1, L["waterline"])
    water = (x0, L["waterline"] - L["hull_h"] * 0.3, x1, L["waterline"] + L["hull_h"] * 0.35)
    return sup, hull, water


def draw_ship(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    x0, x1, ln = L["x0"], L["x1"], L["x1"] - L["x0"]
    wl, deck, hh, dh = L["waterline"], L["deck"], L["hull_h"], L["deck_h"]
    if L["view"] == "side":
        _ship_side(d, a, L, x0, x1, ln, wl, deck, hh, dh)
    else:
        _ship_end(d, a, L, x0, x1, ln, wl, deck, hh, dh)
    # the hull sits in the water: a band of water over its bottom, a bow wave on top
    d.rectangle((x0 - ln * 0.08, wl - hh * 0.12, x1 + ln * 0.08, wl + hh * 0.3), fill=WATER)
    d.line([(x0 - ln * 0.08, wl - hh * 0.12), (x1 + ln * 0.08, wl - hh * 0.12)], fill=(170, 200, 215),
           width=max(int(hh * 0.08), 1))


def _ship_side(d, a, L, x0, x1, ln, wl, deck, hh, dh) -> None:
    """Profile, bow to the right: hull with raked bow, boot top, markings, decks, funnels."""
    bow = x1 - ln * L["rake"]
    d.polygon([(x0, deck), (x1, deck - hh * 0.12), (bow, wl), (x0 + ln * 0.02, wl)], fill=a["hull"])
    boot = wl - hh * 0.22
    d.polygon([(x0 + ln * 0.015, boot), (bow + (x1 - bow) * 0.22, boot), (bow, wl), (x0 + ln * 0.02, wl)],
              fill=a["boot"])
    m = a["marking"]
    if m == "stripe":
        y = deck + hh * 0.25
        d.rectangle((x0, y, bow + (x1 - bow) * 0.6, y + hh * 0.16), fill=a["mark"])
    elif m == "bow_flash":
        d.polygon([(x1 - ln * 0.2, deck), (x1 - ln * 0.12, deck), (x1 - ln * 0.2, wl - hh * 0.25),
                   (x1 - ln * 0.28, wl - hh * 0.25)], fill=a["mark"])
    elif m == "number":
        bw = ln * 0.018
        for i, bit in enumerate(a["code"]):
            bx = x1 - ln * (0.3 - i * 0.035)
            d.rectangle((bx, deck + hh * 0.2, bx + bw * (1.8 if bit else 0.8), deck + hh * 0.55), fill=a["mark"])
    if a["portholes"]:
        for i in range(7):
            px = x0 + ln * (0.15 + i * 0.1)
            r = max(hh * 0.06, 0.6)
            d.ellipse((px - r, deck + hh * 0.3 - r, px + r, deck + hh * 0.3 + r), fill=_WINDOW)
    if a["kind"] == "cargo":
        cw, k = ln * 0.07, 0
        for row in range(2):
            for i in range(12):
                cx = x0 + ln * (L["s1"] + 0.02) + i * cw * 1.04
                if cx + cw > x1 - ln * 0.12:
                    break
                top = deck - dh * 1.1 * (row + 1)
                d.rectangle((cx, top, cx + cw, top + dh * 1.05), fill=a["containers"][k % 12])
                k += 1
    elif a["kind"] == "tanker":
        d.rectangle((x0 + ln * L["s1"], deck - dh * 0.3, x1 - ln * 0.1, deck - dh * 0.15), fill=(90, 90, 90))
    sx0, sx1 = x0 + ln * L["s0"], x0 + ln * L["s1"]
    for k in range(a["decks"]):
        shrink = (sx1 - sx0) * 0.08 * k
        y1, y0 = deck - dh * k, deck - dh * (k + 1)
        front = sx1 - shrink - (dh * 0.8 if a["kind"] == "yacht" else 0.0)
        d.polygon([(sx0 + shrink * 0.3, y0), (front, y0), (sx1 - shrink, y1), (sx0 + shrink * 0.3, y1)],
                  fill=a["super"])
        d.rectangle((sx0 + shrink * 0.3 + dh * 0.3, y0 + dh * 0.3, front - dh * 0.2, y0 + dh * 0.55), fill=_WINDOW)
    top_deck = deck - dh * a["decks"]
    for f in range(a["funnels"]):
        fx = sx0 + (sx1 - sx0) * (0.25 + 0.3 * f)
        fw = dh * 1.2
        d.rectangle((fx - fw / 2, top_deck - dh * 0.9, fx + fw / 2, top_deck), fill=a["funnel"])
        d.rectangle((fx - fw / 2, top_deck - dh * 0.6, fx + fw / 2, top_deck - dh * 0.35), fill=a["funnel_band"])
    if a["mast"]:
        mx = sx1 - (sx1 - sx0) * 0.2
        d.line([(mx, top_deck), (mx, top_deck - dh * 1.6)], fill=(60, 60, 60), width=max(int(dh * 0.15), 1))
        d.line([(mx - dh * 0.5, top_deck - dh * 1.2), (mx + dh * 0.5, top_deck - dh * 1.2)], fill=(60, 60, 60),
               width=max(int(dh * 0.12), 1))


def _ship_end(d, a, L, x0, x1, ln, wl, deck, hh, dh) -> None:
    """Seen from the bow (a V-shaped hull) or the stern (a flat transom with a band)."""
    cx = (x0 + x1) / 2
    front = L["view"] == "front"
    keel = ln * (0.08 if front else 0.3)
    d.polygon([(x0, deck), (x1, deck), (cx + keel, wl), (cx - keel, wl)], fill=a["hull"])
    d.polygon([(x0 + (cx - keel - x0) * 0.78, wl - hh * 0.22), (x1 - (x1 - cx - keel) * 0.78, wl - hh * 0.22),
               (cx + keel, wl), (cx - keel, wl)], fill=a["boot"])
    if a["marking"] == "stripe" or (a["marking"] != "none" and not front):
        d.rectangle((x0 + ln * 0.08, deck + hh * 0.2, x1 - ln * 0.08, deck + hh * 0.36), fill=a["mark"])
    elif a["marking"] == "bow_flash":
        d.polygon([(cx - ln * 0.25, deck), (cx + ln * 0.25, deck), (cx, deck + hh * 0.6)], fill=a["mark"])
    sx0, sx1 = x0 + ln * 0.1, x1 - ln * 0.1
    if a["kind"] == "cargo":
        for i in range(4):
            w4 = (x1 - x0 - ln * 0.1) / 4
            d.rectangle((x0 + ln * 0.05 + i * w4, deck - dh * 0.9, x0 + ln * 0.05 + (i + 1) * w4 - 1, deck),
                        fill=a["containers"][i])
    for k in range(a["decks"]):
        shrink = (sx1 - sx0) * 0.07 * k
        y1, y0 = deck - dh * k, deck - dh * (k + 1)
        d.rectangle((sx0 + shrink, y0, sx1 - shrink, y1), fill=a["super"])
        d.rectangle((sx0 + shrink + dh * 0.2, y0 + dh * 0.3, sx1 - shrink - dh * 0.2, y0 + dh * 0.55), fill=_WINDOW)
    top_deck = deck - dh * a["decks"]
    if a["funnels"]:
        fw = ln * 0.16
        d.rectangle((cx - fw / 2, top_deck - dh * 0.8, cx + fw / 2, top_deck), fill=a["funnel"])
        d.rectangle((cx - fw / 2, top_deck - dh * 0.55, cx + fw / 2, top_deck - dh * 0.32), fill=a["funnel_band"])
    if a["mast"]:
        d.line([(cx + ln * 0.2, top_deck), (cx + ln * 0.2, top_deck - dh * 1.4)], fill=(60, 60, 60),
               width=max(int(dh * 0.12), 1))


_SHIP_MARKING_WORDS = {"none": "none", "stripe": "hull stripe", "bow_flash": "bow flash", "number": "hull number"}


def ship_attributes(a: dict[str, Any]) -> dict[str, str]:
    return {
        "type": a["kind"],
        "hull": color_name(a["hull"]),
        "superstructure": color_name(a["super"]),
        "decks": str(a["decks"]),
        "funnels": str(a["funnels"]),
        "funnel_color": color_name(a["funnel"]) if a["funnels"] else "none",
        "marking": _SHIP_MARKING_WORDS[a["marking"]],
        "marking_color": color_name(a["mark"]) if a["marking"] != "none" else "none",
        "mast": "yes" if a["mast"] else "no",
    }


def ship_caption(t: dict[str, str]) -> str:
    """e.g. 'a black tanker with a white superstructure of 3 decks, one red funnel and a yellow hull stripe'."""
    decks = "one deck" if t["decks"] == "1" else f"{t['decks']} decks"
    parts = [f"{article(t['superstructure'])} superstructure of {decks}"]
    if t["funnels"] != "0":
        n = "one" if t["funnels"] == "1" else "two"
        parts.append(f"{n} {t['funnel_color']} funnel" + ("s" if n == "two" else ""))
    if t["marking"] != "none":
        parts.append(f"{article(t['marking_color'])} {t['marking']}")
    if t["mast"] == "yes":
        parts.append("a mast")
    listed = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return f"{article(t['hull'])} {t['type']} with {listed}"
