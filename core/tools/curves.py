"""Training curves of a run (`<run>/curves.png`): loss and its parts, the learning rate,
and the evaluation metrics over optimisation steps, read from metrics.jsonl.

Plotted with matplotlib's object API on its Agg canvas (no pyplot, no display, no global
backend switch), one shared step axis for every panel. `core run` redraws the picture
after every evaluation (an `on_evaluate_end` hook of the built-in plugin); `core curves
RUN` draws it on demand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: keys of a train line that are not loss values
TRAIN_FIELDS = {"event", "stage", "epoch", "global_step", "lr", "images_per_s", "images_seen", "tag", "seconds"}
#: pixels per inch of the saved picture (`size` arguments are in pixels)
DPI = 100


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


def plot_panels(panels: Sequence[Panel], columns: int = 2, size: tuple[int, int] = (420, 260),
                title: str = "") -> "Figure":
    """Panels in a grid (each `size` pixels) under an optional title, as a matplotlib
    Figure on the Agg canvas; panels share the step axis, which starts at 0 or below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = max(1, min(columns, len(panels) or 1))
    rows = max(1, math.ceil(len(panels) / columns))
    fig = Figure(figsize=(columns * size[0] / DPI, rows * size[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, fontsize=11)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    xs = [x for p in panels for s in p.series for x in s.xs]
    for ax, panel in zip(axes, panels):
        ax.set_title(panel.title, fontsize=10, loc="left")
        ax.grid(alpha=0.3)
        points = [y for s in panel.series for y in s.ys if math.isfinite(y)]
        if not points:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        for s in panel.series:
            ax.plot(s.xs, s.ys, marker="o" if s.markers or len(s.xs) == 1 else None, ms=3, lw=1.5,
                    label=s.name or None)
        if panel.log_y and all(y > 0 for y in points):
            ax.set_yscale("log")
        if any(s.name for s in panel.series):
            ax.legend(fontsize=7, loc="best")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if xs:  # one step axis for every panel
        low = min(0.0, min(xs))
        for ax in axes[:len(panels)]:
            ax.set_xlim(low, max(max(xs), low + 1))
    for ax in axes[max(0, len(panels) - columns):len(panels)]:
        ax.set_xlabel("step", fontsize=8)
    return fig

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
    from core.training.run_folder import read_metrics

    lines = read_metrics(source)  # a cut or edited line is one line naming it
    out = Path(out) if out is not None else run_dir / "curves.png"
    figure = plot_panels(curve_panels(lines, metrics), title=f"training curves: {run_dir.name}")
    out.parent.mkdir(parents=True, exist_ok=True)  # as extract and export make theirs
    tmp = out.with_name(out.name + ".tmp")
    figure.savefig(tmp, format="png", dpi=DPI)
    tmp.replace(out)  # atomic: a viewer never sees half a file
    return out
