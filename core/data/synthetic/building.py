"""Buildings: identity in the facade (floors, window grid and shape, wall and window
colours, floor bands, balconies), the roof and the shop front, as in landmark and
building re-identification (University-1652). Part boxes: roof, facade, ground floor."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import ImageDraw

from core.data.synthetic.drawing import Box, article, cloth_color, color_name, hsv, shade

WALLS = ((178, 80, 60), (200, 190, 170), (150, 150, 150), (235, 225, 200), (120, 70, 50), (220, 200, 150),
         (180, 200, 210), (225, 180, 170), (90, 95, 100))
GLASS = ((40, 60, 90), (90, 140, 180), (30, 30, 35), (230, 210, 120), (150, 190, 200))


def building_identity(rng: np.random.Generator) -> dict[str, Any]:
    wall = WALLS[rng.integers(len(WALLS))] if rng.random() < 0.7 else cloth_color(rng)
    return {
        "floors": int(rng.integers(3, 9)),
        "cols": int(rng.integers(2, 6)),
        "width": rng.uniform(0.55, 0.85),
        "wall": shade(wall, rng.uniform(0.9, 1.1)),
        "glass": GLASS[rng.integers(len(GLASS))],
        "frame": hsv(0, 0, float(rng.choice([0.15, 0.95]))),
        "window": str(rng.choice(["square", "tall", "wide", "arched"])),
        "roof": str(rng.choice(["flat", "gabled", "stepped", "antenna"])),
        "roof_color": cloth_color(rng) if rng.random() < 0.5 else (60, 60, 65),
        "band": cloth_color(rng) if rng.random() < 0.4 else None,
        "balconies": bool(rng.random() < 0.35),
        "awning": cloth_color(rng) if rng.random() < 0.6 else None,
        "door": cloth_color(rng),
        "door_x": rng.uniform(0.15, 0.85),
    }


def building_layout(a: dict[str, Any], view: str, pose: np.ndarray, w: int, h: int) -> dict[str, Any]:
    width = w * a["width"] * (0.62 if view == "side" else 1.0)
    total = min(h * (0.4 + 0.035 * a["floors"]), w * 2.2)
    roof_h = total * (0.0 if a["roof"] == "flat" else 0.1)
    floor_h = (total - roof_h) / (a["floors"] + 1.3)
    cx = w * 0.5 + (width * 0.2 if view == "side" else 0.0)
    bottom = h * (0.5 + total / h / 2) + (pose[2] - 0.5) * h * 0.02
    return {"view": view, "x0": cx - width / 2, "x1": cx + width / 2, "bottom": bottom,
            "ground": bottom - floor_h * 1.3, "eaves": bottom - floor_h * (a["floors"] + 1.3),
            "top": bottom - total, "floor_h": floor_h, "side_w": width * 0.45 if view == "side" else 0.0}


def building_parts(L: dict[str, Any]) -> tuple[Box, Box, Box]:
    x0 = L["x0"] - L["side_w"]
    roof = (x0, L["top"] - L["floor_h"] * 0.3, L["x1"], L["eaves"] + L["floor_h"] * 0.3)
    return roof, (x0, L["eaves"], L["x1"], L["ground"]), (x0, L["ground"], L["x1"], L["bottom"])


def draw_building(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    """A facade seen from the front, the back (no shop front) or obliquely (a darker side wall)."""
    x0, x1, eaves, ground, bottom, fh = L["x0"], L["x1"], L["eaves"], L["ground"], L["bottom"], L["floor_h"]
    if L["view"] == "side":
        sw = L["side_w"]
        d.polygon([(x0 - sw, eaves + fh * 0.4), (x0, eaves), (x0, bottom), (x0 - sw, bottom)], fill=shade(a["wall"], 0.7))
        for f in range(a["floors"]):
            y = eaves + fh * (f + 0.35) + fh * 0.4 * (1 - f / max(a["floors"], 1)) * 0.5
            d.rectangle((x0 - sw * 0.7, y, x0 - sw * 0.3, y + fh * 0.45), fill=shade(a["glass"], 0.7))
    _roof(d, a, L)
    d.rectangle((x0, eaves, x1, bottom), fill=a["wall"])
    if a["band"] is not None:
        for f in range(1, a["floors"] + 1):
            y = eaves + fh * f
            d.rectangle((x0, y - fh * 0.1, x1, y + fh * 0.02), fill=a["band"])
    cols, width = a["cols"], x1 - x0
    ww = {"square": 0.5, "tall": 0.38, "wide": 0.7, "arched": 0.42}[a["window"]] * width / cols
    wh = {"square": 0.5, "tall": 0.7, "wide": 0.42, "arched": 0.62}[a["window"]] * fh
    for f in range(a["floors"]):
        y = eaves + fh * f + (fh - wh) / 2
        for c in range(cols):
            x = x0 + width * (c + 0.5) / cols - ww / 2
            d.rectangle((x - 1, y - 1, x + ww + 1, y + wh + 1), fill=a["frame"])
            if a["window"] == "arched":
                d.chord((x, y, x + ww, y + ww), 180, 360, fill=a["glass"])
                d.rectangle((x, y + min(ww / 2, wh), x + ww, y + wh), fill=a["glass"])
            else:
                d.rectangle((x, y, x + ww, y + wh), fill=a["glass"])
        if a["balconies"] and f % 2 == 1:
            d.rectangle((x0 + width * 0.05, y + wh * 0.7, x1 - width * 0.05, y + wh + fh * 0.08), fill=a["frame"])
    front = L["view"] != "back"
    if front and a["awning"] is not None:
        d.polygon([(x0, ground + fh * 0.1), (x1, ground + fh * 0.1), (x1 + width * 0.03, ground + fh * 0.45),
                   (x0 - width * 0.03, ground + fh * 0.45)], fill=a["awning"])
        d.rectangle((x0 + width * 0.05, ground + fh * 0.55, x1 - width * 0.05, bottom - fh * 0.1), fill=a["glass"])
    dx = x0 + width * (a["door_x"] if front else 1 - a["door_x"])
    dw = width * 0.12
    d.rectangle((dx - dw / 2, ground + fh * 0.35, dx + dw / 2, bottom), fill=a["door"] if front else shade(a["wall"], 0.6))


def _roof(d: ImageDraw.ImageDraw, a: dict[str, Any], L: dict[str, Any]) -> None:
    x0, x1, eaves, top, fh = L["x0"], L["x1"], L["eaves"], L["top"], L["floor_h"]
    col, kind, width = a["roof_color"], a["roof"], x1 - x0
    if kind == "gabled":
        d.polygon([(x0 - width * 0.04, eaves), (x1 + width * 0.04, eaves), ((x0 + x1) / 2, top)], fill=col)
    elif kind == "stepped":
        d.rectangle((x0 + width * 0.15, top + (eaves - top) * 0.35, x1 - width * 0.15, eaves), fill=col)
        d.rectangle((x0 + width * 0.32, top, x1 - width * 0.32, eaves), fill=col)
    elif kind == "antenna":
        d.rectangle((x0, eaves - fh * 0.25, x1, eaves), fill=col)
        ax = x0 + width * 0.7
        d.line([(ax, eaves), (ax, top)], fill=col, width=max(int(width * 0.03), 1))
    else:
        d.rectangle((x0 - width * 0.02, eaves - fh * 0.2, x1 + width * 0.02, eaves), fill=col)


def building_attributes(a: dict[str, Any]) -> dict[str, str]:
    return {
        "floors": str(a["floors"]),
        "window_columns": str(a["cols"]),
        "wall": color_name(a["wall"]),
        "windows": a["window"],
        "glass": color_name(a["glass"]),
        "roof": a["roof"],
        "roof_color": color_name(a["roof_color"]),
        "floor_bands": color_name(a["band"]) if a["band"] is not None else "none",
        "balconies": "yes" if a["balconies"] else "no",
        "awning": color_name(a["awning"]) if a["awning"] is not None else "none",
        "door": color_name(a["door"]),
    }


def building_caption(t: dict[str, str]) -> str:
    """e.g. 'a grey building of 5 floors with 3 columns of tall windows, a gabled red roof and a green awning'."""
    parts = [f"{t['window_columns']} columns of {t['windows']} windows", f"{article(t['roof'])} {t['roof_color']} roof"]
    if t["floor_bands"] != "none":
        parts.append(f"{t['floor_bands']} floor bands")
    if t["balconies"] == "yes":
        parts.append("balconies")
    if t["awning"] != "none":
        parts.append(f"{article(t['awning'])} awning")
    parts.append(f"{article(t['door'])} door")
    return f"{article(t['wall'])} building of {t['floors']} floors with " + ", ".join(parts[:-1]) + " and " + parts[-1]
