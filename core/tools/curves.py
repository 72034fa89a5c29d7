"""Training curves of a run (`<run>/curves.png`): loss and its parts, the learning rate,
and the evaluation metrics over optimisation steps, read from metrics.jsonl.

Drawn with PIL by a small line-plot helper (`plot_panels`), so no plotting library is
needed. `core run` redraws the picture after every evaluation (an `on_evaluate_end`
hook of the built-in plugin); `core curves RUN` draws it on demand.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from core.tools.pictures import INK, WHITE, font

#: tab10
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
#: keys of a train line that are not loss values
TRAIN_FIELDS = {"event", "stage", "epoch", "global_step", "lr", "images_per_s", "tag", "seconds"}


@dataclass
class Series:
    name: str
    xs: list[float]
    ys: list[float]
    markers: bool = False


@dataclass
class Panel:
    title: str
    series: list[Series] = field(default_factory=list)
    log_y: bool = False


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks = [round(start, 12)]
    while ticks[-1] < high - step * 1e-9:  # the last tick reaches `high`: lines stay inside
        ticks.append(round(start + len(ticks) * step, 12))
    return ticks


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-2:
        return f"{value:.0e}"
    return f"{value:g}" if abs(value) >= 1 else f"{value:.3g}"


def draw_panel(panel: Panel, width: int, height: int, x_range: tuple[float, float] | None = None) -> Image.Image:
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    small = font(11)
    draw.text((8, 4), panel.title, fill=INK, font=font(13))
    left, right, top, bottom = 56, width - 12, 26, height - 28
    points = [(x, y) for s in panel.series for x, y in zip(s.xs, s.ys) if math.isfinite(y)]
    if not points:
        draw.text((left, (top + bottom) // 2), "no data", fill=INK, font=small)
        return img
    logged = panel.log_y and all(y > 0 for _, y in points)
    transform = math.log10 if logged else (lambda v: v)
    xs = [p[0] for p in points]
    ys = [transform(p[1]) for p in points]
    x0, x1 = x_range or (min(xs), max(xs))
    x1 = x1 if x1 > x0 else x0 + 1
    y_ticks = nice_ticks(min(ys), max(ys))
    y0, y1 = (y_ticks[0], y_ticks[-1]) if len(y_ticks) > 1 else (min(ys) - 1, max(ys) + 1)
    px = lambda x: left + (x - x0) / (x1 - x0) * (right - left)  # noqa: E731
    py = lambda y: bottom - (y - y0) / ((y1 - y0) or 1) * (bottom - top)  # noqa: E731
    for t in y_ticks:
        y = py(t)
        draw.line([left, y, right, y], fill=(232, 232, 232))
        draw.text((4, y - 6), _label(10 ** t if logged else t), fill=INK, font=small)
    for t in nice_ticks(x0, x1):
        if x0 <= t <= x1:
            x = px(t)
            draw.line([x, bottom, x, bottom + 4], fill=INK)
            draw.text((x - 8, bottom + 6), _label(t), fill=INK, font=small)
    draw.rectangle([left, top, right, bottom], outline=(150, 150, 150))
    draw.text((right - 30, bottom + 14), "step", fill=(110, 110, 110), font=small)
    named = [s for s in panel.series if s.name]
    legend_w = 22 + max(draw.textlength(s.name[:18], font=small) for s in named) if named else 0
    for i, s in enumerate(panel.series):
        colour = PALETTE[i % len(PALETTE)]
        pts = [(px(x), py(transform(y))) for x, y in zip(s.xs, s.ys) if math.isfinite(y)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        if s.markers or len(pts) == 1:
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    if named:  # on a white box over the lines, top right
        lx = right - legend_w - 6
        draw.rectangle([lx - 4, top + 3, right - 3, top + 7 + 13 * len(named)], fill=WHITE, outline=(200, 200, 200))
        for i, s in enumerate(named):
            colour = PALETTE[panel.series.index(s) % len(PALETTE)]
            y = top + 5 + 13 * i
            draw.line([lx, y + 6, lx + 16, y + 6], fill=colour, width=3)
            draw.text((lx + 20, y), s.name[:18], fill=INK, font=small)
    return img


def plot_panels(panels: Sequence[Panel], columns: int = 2, size: tuple[int, int] = (420, 260),
                title: str = "") -> Image.Image:
    """Panels in a grid under an optional title."""
    xs = [x for p in panels for s in p.series for x in s.xs]
    x_range = (min(0.0, min(xs)), max(xs)) if xs else None  # one step axis for every panel
    rows = math.ceil(len(panels) / columns)
    head = 24 if title else 0
    canvas = Image.new("RGB", (columns * size[0], head + rows * size[1]), WHITE)
    if title:
        ImageDraw.Draw(canvas).text((8, 5), title, fill=INK, font=font(14))
    for i, panel in enumerate(panels):
        canvas.paste(draw_panel(panel, *size, x_range=x_range), ((i % columns) * size[0], head + (i // columns) * size[1]))
    return canvas


def curve_panels(lines: Sequence[dict], metrics: Sequence[str] = ("mAP", "rank-1")) -> list[Panel]:
    """Panels from metrics.jsonl records: losses, logged parts, lr, and each metric
    (one series per test set, `<set>/<metric>` keys)."""
    train = [r for r in lines if r.get("event") == "train"]
    evals = [r for r in lines if r.get("event") == "eval"]
    steps = [r["global_step"] for r in train]
    keys: list[str] = []
    for r in train:
        keys.extend(k for k in r if k not in TRAIN_FIELDS and k not in keys and isinstance(r[k], (int, float)))
    series = lambda k: Series(k, [r["global_step"] for r in train if k in r], [float(r[k]) for r in train if k in r])  # noqa: E731
    panels = [Panel("loss", [series(k) for k in keys if "/" not in k])]
    parts = [k for k in keys if "/" in k]
    if parts:
        panels.append(Panel("logged loss parts", [series(k) for k in parts]))
    if steps:
        panels.append(Panel("learning rate", [series("lr")]))
    for metric in metrics:
        names = sorted({k for r in evals for k in r if k.endswith("/" + metric) and k.count("/") == 1})
        if names:
            panels.append(Panel(f"{metric} (%)", [Series(k.split("/")[0], [r["global_step"] for r in evals if k in r],
                                                         [float(r[k]) for r in evals if k in r], markers=True)
                                                  for k in names]))
    return panels


def write_curves(run_dir: str | Path, out: str | Path | None = None,
                 metrics: Sequence[str] = ("mAP", "rank-1")) -> Path:
    """Draw `<run_dir>/metrics.jsonl` to `out` (default `<run_dir>/curves.png`)."""
    run_dir = Path(run_dir)
    source = run_dir / "metrics.jsonl"
    if not source.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir} (a run folder written by `core run` is expected)")
    with open(source, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    out = Path(out) if out is not None else run_dir / "curves.png"
    picture = plot_panels(curve_panels(lines, metrics), title=f"training curves: {run_dir.name}")
    tmp = out.with_name(out.name + ".tmp")
    picture.save(tmp, format="PNG")
    tmp.replace(out)  # atomic: a viewer never sees half a file
    return out
