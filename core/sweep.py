"""Ablations: several pipelines and/or a grid of overrides, each run with several seeds,
ending in one comparison in a sweep folder: comparison.md (the table), comparison.csv (every
number) and comparison.png (each metric per row with its interval).

    core run base.yaml --grid losses.1.margin=0.3,0.1 --seeds 0,1,2,3,4,5

The first row is the baseline. Each row shows n, mean, sample std and the 95% t interval
of every final metric, and the training budget (optimisation steps, images seen) of its
runs, flagged when rows differ; every other row is compared with the baseline over the
seeds both ran (paired: mean difference with its interval, paired t-test, exact
sign-flip test for n <= 10; core/statistics.py), and the differences that are not
significant at `alpha` are marked. Every variant is built the cheap way before the first
run (`check_variants`): one that a component refuses stops the sweep before anything
trains. A variant that fails as it runs is reported in the table and does not stop the
others; `core run` then exits 1, or, when every run failed for one reason, that reason's
code: 2 bad input, 3 NaN/Inf (`sweep_exit_code`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import logging
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from core import statistics as stats
from core.config.loading import ConfigError, LoadedConfig, load_pipeline
from core.exit_codes import exit_code
from core.log_setup import echo_to
from core.training.checkpoint import atomic_write_text
from core.training.report import COLUMNS

log = logging.getLogger(__name__)

#: Significance level of the verdicts; power and effect sizes (metric points) of the
#: seeds-needed estimate.
ALPHA = 0.05
POWER = 0.8
EFFECTS = (0.5, 1.0, 2.0)


@dataclass
class Variant:
    name: str
    pipeline: Path
    overrides: list[str]
    seeds: list[int | None]
    runs: list[Path] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: the seed of each entry of `metrics` (what pairs two rows)
    metric_seeds: list[int | None] = field(default_factory=list)
    #: (optimisation steps, training images seen) of each entry of `metrics`
    budgets: list[tuple[int | None, int | None]] = field(default_factory=list)
    #: the --grid values among `overrides` (a failure they cause is told as --grid's)
    grid: list[str] = field(default_factory=list)
    #: per entry of `errors`, the exit code that run alone would have ended with (2: bad input)
    error_codes: list[int] = field(default_factory=list)
    #: the pipeline with `overrides` as `plan` loaded it (`check_variants` builds it; None:
    #: a variant made by hand, loaded there). Its runs load their own, with their seed.
    config: LoadedConfig | None = field(default=None, repr=False, compare=False)


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
            raise ConfigError(f"expects key.path=value1,value2,..., got '{spec}'", file="--grid")
        listed = split_values(values)
        twice = sorted({v for v in listed if listed.count(v) > 1})
        if twice:  # the same runs twice, the second row labelled as if from another file
            raise ConfigError(f"'{spec}' gives {', '.join(twice)} twice; give each value once", file="--grid")
        axes.append([f"{key.strip()}={v}" for v in listed])
    return axes


def parse_seeds(text: str | None) -> list[int | None]:
    if not text:
        return [None]
    try:
        seeds = [int(s) for s in split_values(text)]
    except ValueError:
        raise ConfigError(f"expects integers separated by commas, got '{text}'", file="--seeds") from None
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:  # one run folder per seed: the second run of a seed was refused, or would replace the first
        raise ConfigError(f"seed {', '.join(map(str, twice))} is given twice in '{text}'; give each seed once",
                          file="--seeds")
    return seeds


def plan(pipelines: Sequence[str | Path], overrides: Sequence[str], grid: Sequence[str],
         seeds: str | None) -> list[Variant]:
    """Every pipeline x every combination of grid values, each with the seeds. Each
    variant's label is unique (it names its table row and its run folders): a label
    already taken (an edited copy that kept its pipeline's `name:`, the same file given
    twice) gets its file name, then a counter (a grid value given twice is refused).
    Taken means its folder is taken: labels that differ only in characters a folder name
    cannot hold (`a b`, `a_b`) or in case (one folder on macOS and Windows) would share
    their runs."""
    seed_list = parse_seeds(seeds)
    variants: list[Variant] = []
    taken: set[str] = set()

    def folder(label: str) -> str:
        return _slug(label).lower()

    for path in pipelines:
        base = load_pipeline(path, overrides)
        name = base.data.get("name") or Path(path).stem
        for combo in itertools.product(*parse_grid(grid)):
            # a grid key that cannot be set (an index out of range, a path through a value) is refused
            # here, not once per variant as it runs
            config = _load_grid_point(path, overrides, combo) if combo else base
            label = " ".join([str(name), *combo]) if combo else str(name)
            if folder(label) in taken:
                label = f"{label} ({Path(path).name})"
            unique, k = label, 2
            while folder(unique) in taken:
                unique, k = f"{label} #{k}", k + 1
            taken.add(folder(unique))
            variants.append(Variant(unique, Path(path), [*overrides, *combo], list(seed_list), grid=list(combo),
                                    config=config))
    return variants


def _grid_owner(key: str, combo: Sequence[str]) -> str | None:
    """The `key=value` of `combo` that set `key` (or a key inside it, or around it)."""
    parts = key.split(".")
    for item in combo:
        own = item.partition("=")[0].strip().split(".")
        if parts[:len(own)] == own[:len(parts)]:
            return item
    return None


def _as_grid_error(exc: Exception, combo: Sequence[str]) -> Exception:
    """A ConfigError the loader told as `--set` whose key a --grid value set, told as --grid's."""
    if not isinstance(exc, ConfigError) or exc.file != "--set" or not exc.key:
        return exc
    owner = _grid_owner(exc.key, combo)
    if owner is None:
        return exc
    return ConfigError(f"{exc.message} (from --grid {owner})", file="--grid", key=exc.key)


def _load_grid_point(path: str | Path, overrides: Sequence[str], combo: Sequence[str]) -> LoadedConfig:
    """The pipeline with one grid point's overrides applied; what cannot be applied is told
    as the --grid value it comes from (the loader names every override `--set`)."""
    try:
        return load_pipeline(path, [*overrides, *combo])
    except ConfigError as exc:
        told = _as_grid_error(exc, combo)
        if told is exc:
            raise
        raise told from None


def check_variants(variants: Sequence[Variant]) -> None:
    """Build every variant once (not per seed) as its runs will, the cheap way
    (core.parameter_check.check_build: no training, labelers built but not run, no image
    read, the model on the meta device), before the first run: a variant whose component refuses it
    (`--grid sampler.name=pk,random` keeps pk's `k`, which 'random' does not take) was found
    only when its turn came, after the variants before it had trained. The first refusal is
    one ConfigError naming the variant and the key (`core run` exits 2; `--print-config`
    checks so too). Each variant's config as `plan` loaded it, built from a copy (the
    variant's stays as loaded)."""
    import copy

    from core.parameter_check import check_build

    for n, variant in enumerate(variants, 1):
        try:
            config = variant.config if variant.config is not None else load_pipeline(variant.pipeline,
                                                                                     variant.overrides)
            check_build(copy.deepcopy(config))
        except Exception as exc:
            if exit_code(exc) != 2:  # check_build raises bad input only; anything else is a bug, told as one
                raise
            told = _as_grid_error(exc, variant.grid)
            raise ConfigError(f"variant {n}/{len(variants)} '{variant.name}': {told}") from exc


def _slug(text: str) -> str:
    """A folder name for `text`; a long one is cut and ends with a hash of the whole text,
    so two labels that differ only past the cut still get their own folders."""
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")
    if len(slug) <= 120:
        return slug
    return f"{slug[:111]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def finished_metrics(run_dir: Path) -> dict[str, float] | None:
    """The final metrics of the run in `run_dir` (its `final` evaluation in metrics.jsonl),
    or None when it has none. Reads only metrics.jsonl: a finished run needs no checkpoint."""
    from core.training.run_folder import RunFolderError, read_metrics

    try:
        finals = [r for r in read_metrics(run_dir) if r.get("event") == "eval" and r.get("tag") == "final"]
    except (OSError, ValueError, RunFolderError):
        return None
    return {k: v for k, v in finals[-1].items() if "/" in k} if finals else None


def _check_same_pipeline(run_dir: Path, pipeline: Path, overrides: list[str]) -> None:
    """Refuse to continue into `run_dir` when the run there was made from another pipeline
    (a changed YAML or a --set the earlier sweep did not have): its numbers would be mixed
    into the row without notice."""
    from core.runner import resolved_pipeline_data

    stored_file = run_dir / "pipeline.yaml"
    try:
        stored = load_pipeline(stored_file).data
    except (OSError, ConfigError) as exc:
        raise ConfigError(f"{stored_file}: cannot read the run's pipeline to continue the sweep ({exc}); "
                          f"remove {run_dir} to run it again") from None
    wanted = resolved_pipeline_data(load_pipeline(pipeline, overrides))
    for data in (stored, wanted):  # a stop_after_steps stop is continued as --resume does: ignored
        if isinstance(data.get("trainer"), dict):
            data["trainer"] = {k: v for k, v in data["trainer"].items() if k != "stop_after_steps"}
    if stored != wanted:
        keys = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        raise ConfigError(f"{run_dir} holds a run of a different pipeline (differs in: {', '.join(keys)}); "
                          "--continue only reuses runs of the same resolved pipeline: remove that folder "
                          "or give another --sweep-dir", file=str(stored_file))


def _run_dir(sweep_dir: Path, variant: Variant, seed: int | None) -> Path:
    return sweep_dir / _slug(variant.name) / (f"seed-{seed}" if seed is not None else "run")


def _run_overrides(variant: Variant, seed: int | None) -> list[str]:
    return [*variant.overrides, *([f"seed={seed}"] if seed is not None else [])]


def _seed_label(seed: int | None) -> str:
    """'seed 3: ' before a run's error in its row; '' without --seeds, where the run used its
    pipeline's own `seed:` (it said 'seed None', a seed no run has)."""
    return f"seed {seed}: " if seed is not None else ""


def _which(variant: Variant, seed: int | None) -> str:
    """The run a line is about: 'label (seed 3)', or the label alone without --seeds."""
    return f"{variant.name} (seed {seed})" if seed is not None else variant.name


def _check_sweep_dir(variants: list[Variant], sweep_dir: Path, continue_sweep: bool, echo=None) -> None:
    """Refuse, before any run starts, a --sweep-dir the sweep cannot go into: a file, a path
    through one, a folder that cannot be written (it was a raw '[Errno 20]', exit 1); one
    holding an earlier sweep's runs or table without --continue (each run failed, and its
    comparison.md was replaced by a table of failures); with --continue, one whose runs come
    from another pipeline (its table was replaced the same way)."""
    from core.training.run_folder import folder_problem

    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} is a file; give a folder (it is made if missing)", file="--sweep-dir")
    problem = folder_problem(sweep_dir)  # a path through a file, a folder that cannot be written
    if problem is not None:
        raise ConfigError(f"cannot make the sweep folder {sweep_dir}: {problem}; give another", file="--sweep-dir")
    if (sweep_dir / "pipeline.yaml").is_file():  # its runs and table would be mixed into a run's folder
        raise ConfigError(f"{sweep_dir} is a run folder (it holds pipeline.yaml), not a sweep's; give the sweep "
                          "a folder of its own", file="--sweep-dir")
    if continue_sweep and not (sweep_dir / "comparison.md").is_file() and not any(
            (_run_dir(sweep_dir, v, s) / "pipeline.yaml").is_file() for v in variants for s in v.seeds):
        (echo or echo_to(log))(f"warning: --continue: {sweep_dir} holds no run of this sweep (no comparison.md, "
                               "no run folder of its variants); it starts from the beginning")
    if continue_sweep:
        for variant in variants:
            for seed in variant.seeds:
                run_dir = _run_dir(sweep_dir, variant, seed)
                if (run_dir / "pipeline.yaml").is_file():
                    _check_same_pipeline(run_dir, variant.pipeline, _run_overrides(variant, seed))
        return
    taken = [p for p in [sweep_dir / "comparison.md",
                         *(_run_dir(sweep_dir, v, s) for v in variants for s in v.seeds)]
             if p.is_file() or (p.is_dir() and any(p.iterdir()))]
    if taken:
        shown = ", ".join(str(p.relative_to(sweep_dir)) for p in taken[:3]) + (", ..." if len(taken) > 3 else "")
        raise ConfigError(f"{sweep_dir} already holds a sweep ({shown}); go on with it with --continue, "
                          "or give another --sweep-dir", file="--sweep-dir")


def run_sweep(variants: list[Variant], sweep_dir: Path, echo=None, alpha: float = ALPHA,
              image_check: str = "error", continue_sweep: bool = False) -> Path:
    """Run every variant x seed into `sweep_dir`, then write comparison.md / .csv / .png.
    `image_check`: what each run does with unreadable images (core.runner.run).
    `continue_sweep` (`core run --continue`): a sweep stopped part-way (a signal, a crash,
    a time limit) goes on where it stopped: a run folder whose run finished is read back
    from its metrics.jsonl, not run again; one that stopped with checkpoints/last.pt is
    resumed exactly; one without is started again. Every run folder reused must hold the
    same resolved pipeline as its variant and seed, or the sweep is refused. Before any run,
    every variant is built the cheap way (`check_variants`)."""
    from core.runner import run
    from core.training.interrupt import Interrupted

    echo = echo or echo_to(log)
    _check_sweep_dir(variants, sweep_dir, continue_sweep, echo)  # before any run, so nothing is overwritten
    check_variants(variants)  # a variant a component refuses: before the first run, not in its turn
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        for seed in variant.seeds:
            run_dir = _run_dir(sweep_dir, variant, seed)
            overrides = _run_overrides(variant, seed)
            try:
                started = continue_sweep and (run_dir / "pipeline.yaml").is_file()
                done = finished_metrics(run_dir) if started else None
                if done is not None:
                    echo(f"{_which(variant, seed)}: finished earlier, read back from {run_dir}")
                    result = type("Finished", (), {"metrics": done})()
                elif started and (run_dir / "checkpoints" / "last.pt").is_file():
                    echo(f"{_which(variant, seed)}: resuming {run_dir}")
                    result = run(None, [], resume=run_dir, image_check=image_check)
                else:
                    result = run(variant.pipeline, overrides, run_dir=run_dir, overwrite=started,
                                 image_check=image_check)
            except Interrupted as exc:  # the user stopped the sweep, not one run: table so far, then stop
                variant.errors.append(f"{_seed_label(seed)}interrupted")
                variant.error_codes.append(exc.exit_code)
                echo(f"warning: sweep interrupted during {_which(variant, seed)}; the table covers the "
                     f"runs that finished. {exc}")
                write_comparison(variants, sweep_dir, alpha=alpha, echo=echo)
                raise
            except Exception as exc:  # noqa: BLE001 - one failed variant must not stop the sweep
                exc = _as_grid_error(exc, variant.grid)
                variant.errors.append(f"{_seed_label(seed)}{type(exc).__name__}: {exc}")
                variant.error_codes.append(exit_code(exc))
                bad_input = variant.error_codes[-1] == 2  # its line says it all: no traceback lines
                echo(f"warning: {_which(variant, seed)}: FAILED: {type(exc).__name__}: {exc}"
                     + ("" if bad_input else "\n" + "".join(traceback.format_exception(exc)[-3:])))
                continue
            variant.runs.append(run_dir)
            if result.metrics is not None:
                variant.metrics.append(result.metrics)
                variant.metric_seeds.append(seed)
                variant.budgets.append(run_budget(run_dir))
    write_comparison(variants, sweep_dir, alpha=alpha, echo=echo)
    return sweep_dir


def sweep_exit_code(variants: list[Variant]) -> int:
    """What `core run` ends a sweep with: 0 when no run failed; when every run failed for
    one reason, the code each would have ended with alone (2 bad input: fix the input,
    nothing ran; 3 every run's loss turned NaN/Inf); 1 otherwise (a crash, failures of
    several kinds, or some runs finished: the table holds their numbers)."""
    codes = [c for v in variants for c in v.error_codes]
    if not codes and not any(v.errors for v in variants):
        return 0
    every_run_failed = all(len(v.errors) >= len(v.seeds) for v in variants)
    return codes[0] if every_run_failed and codes and len(set(codes)) == 1 else 1


def run_budget(run_dir: Path) -> tuple[int | None, int | None]:
    """(optimisation steps, training images seen) at a run's last evaluation."""
    from core.training.run_folder import RunFolderError, read_metrics

    try:
        evals = [r for r in read_metrics(run_dir) if r.get("event") == "eval"]
    except (OSError, RunFolderError):
        return None, None
    last = evals[-1] if evals else {}
    return last.get("global_step"), last.get("images_seen")


def write_comparison(variants: list[Variant], sweep_dir: Path, alpha: float = ALPHA, echo=None) -> None:
    """comparison.md, comparison.csv and comparison.png of `variants` in `sweep_dir`."""
    markdown, table_csv = comparison(variants, alpha=alpha)
    atomic_write_text(sweep_dir / "comparison.md", markdown)
    atomic_write_text(sweep_dir / "comparison.csv", table_csv)
    try:
        plot_comparison(variants, sweep_dir / "comparison.png")
    except Exception as exc:  # noqa: BLE001 - a picture must not lose the table
        (echo or echo_to(log))(f"warning: comparison.png not drawn: {type(exc).__name__}: {exc}")


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


def primary_key(keys: list[str]) -> str | None:
    """The metric the seeds-needed estimate is about: mean/mAP, else the first mAP, else the first."""
    if "mean/mAP" in keys:
        return "mean/mAP"
    return next((k for k in keys if k.endswith("/mAP")), keys[0] if keys else None)


def by_seed(variant: Variant, key: str) -> dict:
    """seed -> final value of `key` (runs without the key left out)."""
    return {seed: m[key] for seed, m in zip(variant.metric_seeds, variant.metrics) if key in m}


def _values(variant: Variant, key: str) -> list[float]:
    return [m[key] for m in variant.metrics if key in m]


def _cell(summary: stats.Summary) -> str:
    if summary.n == 0:
        return "-"
    if summary.n == 1:
        return f"{summary.mean:.2f} (n = 1: no interval)"
    return f"{summary.mean:.2f} ± {summary.half_width:.2f} (sd {summary.std:.2f})"


def _span(values: list) -> str:
    known = sorted({v for v in values if v is not None})
    if not known:
        return "-"
    return f"{known[0]:,}" if len(known) == 1 else f"{known[0]:,}–{known[-1]:,}"


def budgets_differ(variants: list[Variant]) -> list[str]:
    """What differs in training budget between the runs that finished (empty: all equal)."""
    notes = []
    for i, what in ((0, "optimisation steps"), (1, "training images seen")):
        seen = {b[i] for v in variants for b in v.budgets if b[i] is not None}
        if len(seen) > 1:
            rows = "; ".join(f"{v.name}: {_span([b[i] for b in v.budgets])}" for v in variants if v.budgets)
            notes.append(f"{what} differ ({rows})")
    return notes


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def _verdict(paired: stats.Paired, alpha: float) -> str:
    if paired.p_t is None:
        return f"no test (n = {paired.n} shared seed{'s' if paired.n != 1 else ''})"
    if not paired.significant(alpha):
        return f"not significant (p ≥ {alpha:g})"
    text = f"significant (p < {alpha:g})"
    if paired.p_sign_flip is not None and paired.p_sign_flip >= alpha:
        floor = 2 / 2 ** paired.n
        text += (f"; sign-flip p ≥ {alpha:g}" + (f" (its floor is {floor:.3g} with n = {paired.n})"
                                                   if floor >= alpha else ""))
    return text


def comparison(variants: list[Variant], alpha: float = ALPHA) -> tuple[str, str]:
    """The comparison as markdown and CSV: one row per variant, each final metric as mean,
    95% t interval and sample std over its seeds; every row against the first (paired)."""
    keys = _metric_keys(variants)
    base = variants[0] if variants else None
    summaries = {(id(v), k): stats.summarize(_values(v, k)) for v in variants for k in keys}
    pairs = {(id(v), k): stats.compare_paired(by_seed(base, k), by_seed(v, k))
             for v in variants[1:] for k in keys}
    holm = {}  # each row's metrics are one family of tests (stats.holm)
    for v in variants[1:]:
        holm.update(zip([(id(v), k) for k in keys], stats.holm([pairs[(id(v), k)].p_t for k in keys])))
    differ = budgets_differ(variants)

    header = ["variant", "n", "steps", "images seen", *keys, "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in variants:
        status = _status(v)
        cells = []
        for key in keys:
            cell = _cell(summaries[(id(v), key)])
            pair = pairs.get((id(v), key))
            if pair is not None and pair.p_t is not None and cell != "-":
                cell += " *" if pair.significant(alpha) else " †"
            cells.append(cell)
        short = status if len(status) < 200 else status[:197] + "..."
        row = [_md(v.name), str(len(v.metrics)), _span([b[0] for b in v.budgets]),
               _span([b[1] for b in v.budgets]), *cells, _md(short)]
        lines.append("| " + " | ".join(row) + " |")

    text = ["# Comparison", "",
            f"Final metrics in % per variant over its seeds: mean ± half-width of the 95% confidence "
            f"interval (Student's t), sample standard deviation in brackets; n = seeds that finished. "
            f"Baseline: the first row{f' ({base.name})' if base else ''}. Against it, "
            f"* = the paired difference is significant at α = {alpha:g} (paired t-test), "
            f"† = it is not (a difference that small is within the seed noise).", ""]
    if differ:
        text += [f"**Training budgets differ**: {'; '.join(differ)}. Rows that train different budgets "
                 "are not a fair comparison (core/samplers/epoch.py: one epoch length for every sampler).", ""]
    elif any(v.budgets for v in variants):
        text += ["Every run trained the same budget (steps and images seen).", ""]
    text += lines
    text += _paired_section(variants, keys, pairs, holm, alpha)
    text += _seeds_section(variants, keys, pairs, alpha)
    return "\n".join(text) + "\n", _csv(variants, keys, summaries, pairs, holm, alpha)


def _status(v: Variant) -> str:
    return "ok" if not v.errors else ("failed: " if not v.metrics else "partly failed: ") + "; ".join(v.errors)


def _md(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def _paired_section(variants, keys, pairs, holm, alpha) -> list[str]:
    if len(variants) < 2 or not keys:
        return []
    base = variants[0]
    several = len(keys) > 1
    out = ["", f"## Against the baseline ({_md(base.name)}), paired over shared seeds", "",
           "Δ = row − baseline on each seed both ran; mean Δ with its 95% t interval; two-sided p "
           "from the paired t-test and from the exact sign-flip permutation test (all 2^n sign "
           f"patterns of the n differences, n ≤ {stats.EXACT_MAX_N}; free of the normality "
           "assumption, but never below 2/2^n). The verdict is the t-test's at "
           f"α = {alpha:g}."
           + (f" Each metric is tested on its own: over a row's {len(keys)} metrics, at least one is "
              f"called significant by luck more often than α. The Holm column adjusts the t-test's p "
              f"for that (Holm 1979, over the row's metrics, whatever their correlation); name one "
              f"primary metric before the runs (here {primary_key(keys)}) and read the others as "
              f"secondary." if several else ""), "",
           "| variant | metric | shared seeds | Δ mean [95% CI] | p (paired t) | p (sign-flip, exact) | "
           + ("p (Holm, row's metrics) | " if several else "") + "verdict |",
           "|---|---|---|---|---|---|" + ("---|" if several else "") + "---|"]
    for v in variants[1:]:
        for key in keys:
            pair = pairs[(id(v), key)]
            if pair.n == 0:
                out.append(f"| {_md(v.name)} | {key} | 0 | - | - | - | " + ("- | " if several else "")
                           + "no shared seed |")
                continue
            interval = f" [{pair.low:+.2f}, {pair.high:+.2f}]" if pair.low is not None else ""
            adjusted = holm.get((id(v), key))
            verdict = _verdict(pair, alpha)
            if several and pair.significant(alpha) and adjusted is not None and adjusted >= alpha:
                verdict += f"; not after Holm over the row's {len(keys)} metrics"
            out.append(f"| {_md(v.name)} | {key} | {pair.n} | {pair.mean:+.2f}{interval} | {_p(pair.p_t)} | "
                       f"{_p(pair.p_sign_flip)} | " + (f"{_p(adjusted)} | " if several else "") + f"{verdict} |")
    return out


def _seeds_section(variants, keys, pairs, alpha) -> list[str]:
    key = primary_key(keys)
    rows = [(v, pairs[(id(v), key)]) for v in variants[1:] if key and pairs[(id(v), key)].std]
    if not rows:
        return []
    out = ["", f"## Seeds needed ({key})", "",
           f"Paired seeds a two-sided paired t-test at α = {alpha:g} needs to detect a true difference "
           f"of the given size with power {POWER:g}, from the observed standard deviation of the "
           "paired differences (a rough guide: that sd is itself estimated from few seeds).", "",
           "| variant | sd of Δ | " + " | ".join(f"Δ = {e:g}" for e in EFFECTS) + " |",
           "|" + "---|" * (len(EFFECTS) + 2)]
    for v, pair in rows:
        needed = [stats.seeds_needed(pair.std, e, alpha, POWER) for e in EFFECTS]
        out.append(f"| {_md(v.name)} | {pair.std:.2f} | "
                   + " | ".join(str(n) if n is not None else "> 1000" for n in needed) + " |")
    return out


def _csv(variants, keys, summaries, pairs, holm, alpha) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    stat_cols = ("mean", "std", "ci_low", "ci_high")
    pair_cols = ("shared_seeds", "diff_mean", "diff_ci_low", "diff_ci_high", "p_paired_t", "p_sign_flip",
                 "p_holm", "significant")
    writer.writerow(["variant", "seeds_ok", "seeds", "steps", "images_seen",
                     *[f"{k} {c}" for k in keys for c in (*stat_cols, *pair_cols)], "status"])

    def num(x):
        return "" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x)

    for v in variants:
        row = []
        for key in keys:
            s = summaries[(id(v), key)]
            row += [num(s.mean), num(s.std), num(s.low), num(s.high)]
            pair = pairs.get((id(v), key))
            if pair is None:
                row += [""] * len(pair_cols)
            else:
                row += [str(pair.n), num(pair.mean), num(pair.low), num(pair.high), num(pair.p_t),
                        num(pair.p_sign_flip), num(holm.get((id(v), key))),
                        "" if pair.p_t is None else str(pair.significant(alpha)).lower()]
        steps = sorted({b[0] for b in v.budgets if b[0] is not None})
        images = sorted({b[1] for b in v.budgets if b[1] is not None})
        writer.writerow([v.name, len(v.metrics), " ".join(str(s) for s in v.metric_seeds if s is not None),
                         " ".join(map(str, steps)), " ".join(map(str, images)), *row, _status(v)])
    return buffer.getvalue()


def plot_comparison(variants: list[Variant], path: Path):
    """comparison.png: per metric, each row's seeds (dots) and mean with its 95% t interval.
    Drawn on matplotlib's Agg canvas without pyplot (no display, no global backend);
    returns the Figure (None when no row has a metric)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = _metric_keys(variants)
    if not keys:
        return None
    cols = min(len(keys), 3)
    rows = -(-len(keys) // cols)
    height = 0.45 * len(variants) + 1.2
    fig = Figure(figsize=(4.2 * cols, height * rows), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    names = [v.name for v in variants]
    for ax, key in zip(axes.ravel(), keys):
        for y, v in enumerate(variants):
            values = _values(v, key)
            if not values:
                continue
            s = stats.summarize(values)
            ax.plot(values, [y] * len(values), "o", ms=3, alpha=0.45, color="grey")
            if s.low is not None:
                ax.errorbar(s.mean, y, xerr=[[s.mean - s.low], [s.high - s.mean]], fmt="o", color="C0" if y else "C3",
                            capsize=3)
            else:
                ax.plot(s.mean, y, "o", color="C0" if y else "C3")
        base = stats.summarize(_values(variants[0], key))
        if base.mean is not None:
            ax.axvline(base.mean, color="C3", lw=0.8, ls="--")
        ax.set_yticks(range(len(variants)), names if ax in axes[:, 0] else [""] * len(names), fontsize=7)
        ax.set_ylim(len(variants) - 0.5, -0.5)
        ax.set_title(key, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.ravel()[len(keys):]:
        ax.set_visible(False)
    fig.suptitle("mean and 95% t interval per row (dots: seeds; dashed: baseline)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def default_sweep_dir(output_dir: str = "runs") -> Path:
    return Path(output_dir) / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
