"""Ablations: several pipelines and/or a grid of overrides, each run with several seeds,
ending in one comparison table (markdown and CSV) in a sweep folder.

    core run base.yaml --grid sampler.name=pk,random --grid losses.0.weight=0.5,1.0 --seeds 0,1,2

A variant that fails is reported in the table and does not stop the others.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from core.config.loading import ConfigError, load_pipeline
from core.training.checkpoint import atomic_write_text
from core.training.report import COLUMNS


@dataclass
class Variant:
    name: str
    pipeline: Path
    overrides: list[str]
    seeds: list[int | None]
    runs: list[Path] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def split_values(text: str) -> list[str]:
    """`a,b,[1, 2]` -> ['a', 'b', '[1, 2]']: commas inside brackets or braces stay."""
    out, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += char
    out.append(current.strip())
    return [v for v in out if v]


def parse_grid(grid: Sequence[str]) -> list[list[str]]:
    """Each `--grid key=v1,v2` -> the overrides ['key=v1', 'key=v2']."""
    axes = []
    for spec in grid:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip() or not split_values(values):
            raise ConfigError(f"--grid expects key.path=value1,value2,..., got '{spec}'", file="--grid")
        axes.append([f"{key.strip()}={v}" for v in split_values(values)])
    return axes


def parse_seeds(text: str | None) -> list[int | None]:
    if not text:
        return [None]
    try:
        return [int(s) for s in split_values(text)]
    except ValueError:
        raise ConfigError(f"--seeds expects integers separated by commas, got '{text}'", file="--seeds") from None


def plan(pipelines: Sequence[str | Path], overrides: Sequence[str], grid: Sequence[str],
         seeds: str | None) -> list[Variant]:
    """Every pipeline x every combination of grid values, each with the seeds."""
    seed_list = parse_seeds(seeds)
    variants = []
    for path in pipelines:
        name = load_pipeline(path, overrides).data.get("name") or Path(path).stem
        for combo in itertools.product(*parse_grid(grid)):
            label = " ".join([str(name), *combo]) if combo else str(name)
            variants.append(Variant(label, Path(path), [*overrides, *combo], list(seed_list)))
    return variants


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:120]


def run_sweep(variants: list[Variant], sweep_dir: Path, echo=print) -> Path:
    """Run every variant x seed into `sweep_dir`, then write comparison.md / .csv."""
    from core.runner import run

    sweep_dir.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        for seed in variant.seeds:
            extra = [f"seed={seed}"] if seed is not None else []
            run_dir = sweep_dir / _slug(variant.name) / (f"seed-{seed}" if seed is not None else "run")
            try:
                result = run(variant.pipeline, [*variant.overrides, *extra], run_dir=run_dir)
            except Exception as exc:  # noqa: BLE001 - one failed variant must not stop the sweep
                variant.errors.append(f"seed {seed}: {type(exc).__name__}: {exc}")
                echo(f"{variant.name} (seed {seed}): FAILED: {type(exc).__name__}: {exc}\n"
                     + "".join(traceback.format_exception(exc)[-3:]))
                continue
            variant.runs.append(run_dir)
            if result.metrics is not None:
                variant.metrics.append(result.metrics)
    markdown, table_csv = comparison(variants)
    atomic_write_text(sweep_dir / "comparison.md", markdown)
    atomic_write_text(sweep_dir / "comparison.csv", table_csv)
    return sweep_dir


def _metric_keys(variants: list[Variant]) -> list[str]:
    keys: list[str] = []
    for variant in variants:
        for metrics in variant.metrics:
            for key in metrics:
                parts = key.split("/")
                if len(parts) == 2 and parts[1] in COLUMNS and key not in keys:
                    keys.append(key)
    order = {c: i for i, c in enumerate(COLUMNS)}
    return sorted(keys, key=lambda k: (k.startswith("mean/"), k.split("/")[0], order[k.split("/")[1]]))


def comparison(variants: list[Variant]) -> tuple[str, str]:
    """The table: one row per variant, each metric as mean +- std over its seeds."""
    keys = _metric_keys(variants)
    lines = ["| variant | seeds | " + " | ".join(keys) + " | status |", "|" + "---|" * (len(keys) + 3)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["variant", "seeds_ok", *[f"{k} {s}" for k in keys for s in ("mean", "std")], "status"])
    for v in variants:
        status = "ok" if not v.errors else ("failed: " if not v.metrics else "partly failed: ") + "; ".join(v.errors)
        cells, row = [], []
        for key in keys:
            values = [m[key] for m in v.metrics if key in m]
            if values:
                mean, std = float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                cells.append(f"{mean:.2f} ± {std:.2f}")
                row += [f"{mean:.4f}", f"{std:.4f}"]
            else:
                cells.append("-")
                row += ["", ""]
        short = status if len(status) < 200 else status[:197] + "..."
        lines.append(f"| {v.name} | {len(v.metrics)} | " + " | ".join(cells) + f" | {short.replace('|', '/')} |")
        writer.writerow([v.name, len(v.metrics), *row, status])
    header = ("Final metrics in % per variant: mean ± sample standard deviation over seeds.\n\n")
    return header + "\n".join(lines) + "\n", buffer.getvalue()


def default_sweep_dir(output_dir: str = "runs") -> Path:
    return Path(output_dir) / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
