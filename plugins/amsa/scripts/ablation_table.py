"""The table of a MUVA ablation sweep (pipelines/muva_ablation/): per row, the mean over
seeds, a 95% t-interval, and the paired t-test against the baseline row over the seeds
both rows finished (same seed = same data, initialisation and batches up to the row's
change).

    python plugins/amsa/scripts/ablation_table.py SWEEP [SWEEP ...] --baseline muva-abl-full \
        [--metrics synthetic/mAP,synthetic/rank-1] [--out table.md]

SWEEP: a folder `core run ... --seeds ... --sweep-dir SWEEP` wrote (<row>/seed-<n>/
metrics.jsonl); several folders are merged (e.g. one sweep per seed). A row's value for a
seed is its final evaluation (metrics.jsonl, tag "final"); unfinished runs are left out.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path


def final_metrics(run: Path) -> dict[str, float] | None:
    """The final evaluation record of a finished run (tag "final"), None while it runs."""
    file = run / "metrics.jsonl"
    if not file.is_file():
        return None
    last = None
    for line in file.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "eval" and record.get("tag") == "final":
            last = record
    return last


def collect(sweeps: list[Path]) -> dict[str, dict[int, dict[str, float]]]:
    """row -> seed -> final metrics, over every sweep folder."""
    rows: dict[str, dict[int, dict[str, float]]] = {}
    for sweep in sweeps:
        for run in sorted(sweep.glob("*/seed-*")):
            seed = int(re.sub(r"^seed-", "", run.name))
            metrics = final_metrics(run)
            if metrics is not None:
                rows.setdefault(run.parent.name, {})[seed] = metrics
    return rows


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def summary(values: list[float]) -> str:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return f"{mean:.2f} (n = 1)"
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}]"


def paired(row: dict[int, dict[str, float]], base: dict[int, dict[str, float]], key: str) -> str:
    from scipy import stats

    seeds = sorted(set(row) & set(base))
    if len(seeds) < 2:
        return "-"
    a, b = [row[s][key] for s in seeds], [base[s][key] for s in seeds]
    diff = [x - y for x, y in zip(a, b)]
    if all(d == diff[0] for d in diff):
        return f"{diff[0]:+.2f} (constant, n = {len(seeds)})"
    p = float(stats.ttest_rel(a, b).pvalue)
    return f"{sum(diff) / len(diff):+.2f}, p = {p:.2g} (n = {len(seeds)})"


def table(rows, baseline: str, metrics: list[str]) -> str:
    if baseline not in rows:
        raise SystemExit(f"baseline row '{baseline}' not found; rows: {', '.join(sorted(rows))}")
    head = ["row", "seeds", *[f"{m} mean [95% CI]" for m in metrics], *[f"{m} vs {baseline} (paired)" for m in metrics]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in [baseline, *sorted(r for r in rows if r != baseline)]:
        row = rows[name]
        cells = [name, ",".join(str(s) for s in sorted(row))]
        cells += [summary([row[s][m] for s in sorted(row) if m in row[s]]) for m in metrics]
        cells += ["-" if name == baseline else paired(row, rows[baseline], m) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--baseline", default="muva-abl-full")
    parser.add_argument("--metrics", default="synthetic/mAP,synthetic/rank-1")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    text = table(collect(args.sweeps), args.baseline, args.metrics.split(","))
    if args.out:
        args.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
