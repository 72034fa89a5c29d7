"""Ranked-list pictures and the HTML page that shows them (`core search`).

One picture per query: the query, then its top-k gallery items left to right, each with
its rank above and its distance (and identity / camera when known) below. When both
identities are known the border says whether the match is right: green for the query's
identity, red for another; grey when the identity is unknown. A query that carries a text
instruction (an Instruct-ReID caption or attribute sentence) has it written under the
tiles, from the query's left edge (`RankedList.note`, wrapped to the picture's width).
Drawn with PIL alone.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GREEN = (34, 160, 60)
RED = (214, 40, 40)
GREY = (160, 160, 160)
BLUE = (40, 90, 200)
WHITE = (255, 255, 255)
INK = (30, 30, 30)


def jet(values: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8, the classic blue-cyan-yellow-red map."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (255 * rgb).astype(np.uint8)


def font(size: int = 12) -> ImageFont.ImageFont:
    """Pillow's bundled font at `size` (a fixed bitmap font on builds without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # pragma: no cover - old Pillow or no FreeType
        return ImageFont.load_default()


def fit(image: Image.Image, width: int, height: int, fill=WHITE) -> Image.Image:
    """`image` scaled to fit (width, height) keeping its aspect ratio, centred on `fill`."""
    image = image.convert("RGB")
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.NEAREST if scale >= 3 else Image.BICUBIC  # tiny crops stay crisp
    canvas = Image.new("RGB", (width, height), fill)
    canvas.paste(image.resize(size, resample), ((width - size[0]) // 2, (height - size[1]) // 2))
    return canvas


def placeholder(width: int, height: int, text: str = "no image") -> Image.Image:
    img = Image.new("RGB", (width, height), (225, 225, 225))
    ImageDraw.Draw(img).text((4, height // 2 - 6), text, fill=INK, font=font(10))
    return img


@dataclass
class Tile:
    image: Image.Image | None
    #: lines drawn under the image
    caption: Sequence[str] = ()
    border: tuple[int, int, int] = GREY
    #: drawn above the image (the rank)
    heading: str = ""


@dataclass
class RankedList:
    query: Tile
    results: list[Tile]
    title: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    #: a line under the tiles, from the query's left edge, wrapped to the picture's width
    #: (an instruction-conditioned query's instruction)
    note: str = ""

#: at most this many lines of a `RankedList.note` (the last ends in "...")
NOTE_LINES = 4


def wrap(text: str, width: int, measure, max_lines: int = NOTE_LINES) -> list[str]:
    """`text` cut into lines no wider than `width` pixels (`measure(line)`), at spaces where
    it can (a word wider than `width` is cut inside); beyond `max_lines` the last line
    ends in "..."."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if measure(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while measure(word) > width and len(word) > 1:  # a word wider than a line: cut it
            cut = max(1, next(n for n in range(len(word), 0, -1) if measure(word[:n]) <= width or n == 1))
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and measure(last + "...") > width:
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last + "..."]
    return lines


def tile_size(image: Image.Image | None, height: int) -> tuple[int, int]:
    """A tile of `height` with the query's aspect ratio (kept between 1:3 and 2:1)."""
    if image is None:
        return height // 2, height
    width = round(height * image.width / max(image.height, 1))
    return max(height // 3, min(width, 2 * height)), height


def draw_ranked_list(ranked: RankedList, height: int = 128, border: int = 4, gap: int = 6) -> Image.Image:
    """The picture of one ranked list: the query, a separator, then the results."""
    width, height = tile_size(ranked.query.image, height)
    small, big = font(11), font(13)
    line = 13
    lines = max([len(t.caption) for t in [ranked.query, *ranked.results]] + [1])
    top = (18 if ranked.title else 0) + line + 2
    cell_w = width + 2 * border
    cell_h = height + 2 * border
    separator = 3 * gap
    total_w = max(gap + cell_w + separator + len(ranked.results) * (cell_w + gap) + gap, 260)
    note = wrap(ranked.note, total_w - 2 * gap, lambda text: small.getlength(text)) if ranked.note else []
    total_h = top + cell_h + 4 + (lines + len(note)) * line + gap
    canvas = Image.new("RGB", (total_w, total_h), WHITE)
    draw = ImageDraw.Draw(canvas)
    if ranked.title:
        draw.text((gap, 3), ranked.title, fill=INK, font=big)

    def place(tile: Tile, x: int) -> None:
        draw.text((x + 1, top - line - 1), tile.heading, fill=INK, font=small)
        draw.rectangle([x, top, x + cell_w - 1, top + cell_h - 1], fill=tile.border)
        picture = fit(tile.image, width, height) if tile.image is not None else placeholder(width, height)
        canvas.paste(picture, (x + border, top + border))
        for i, text in enumerate(tile.caption):
            draw.text((x + 1, top + cell_h + 3 + i * line), text, fill=INK, font=small)

    place(ranked.query, gap)
    x_sep = gap + cell_w + separator // 2
    draw.line([x_sep, top, x_sep, top + cell_h], fill=GREY, width=2)
    x = gap + cell_w + separator
    for tile in ranked.results:
        place(tile, x)
        x += cell_w + gap
    for i, text in enumerate(note):
        draw.text((gap + 1, top + cell_h + 3 + (lines + i) * line), text, fill=INK, font=small)
    return canvas


LEGEND = (f'<p class="legend">border:<span style="background:rgb{GREEN}"></span>same identity as the query'
          f'<span style="background:rgb{RED}"></span>another identity<span style="background:rgb{GREY}"></span>'
          f'identity unknown<span style="background:rgb{BLUE}"></span>the query</p>')


def write_index(out_dir: Path, entries: Sequence[tuple[str, str]], title: str, intro: str = "",
                legend: bool = True) -> Path:
    """index.html in `out_dir` showing each (picture file name, caption), in order."""
    legend_html = LEGEND if legend else ""
    rows = "\n".join(f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>" for name, caption in entries)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} figure{{margin:0 0 1.2em 0}}
img{{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}} figcaption{{color:#444;font-size:90%}}
.legend span{{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:middle}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>{html.escape(intro)}</p>
{legend_html}
{rows}
</body></html>
"""
    path = Path(out_dir) / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
