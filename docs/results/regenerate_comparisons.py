"""Rewrite the committed comparison files of docs/results with the current comparison code
(core/sweep.py: `comparison`, `write_comparison`) from the per-seed values recorded beside
them. It TRAINS NOTHING: every number comes from files already in the repository.

Why: the files were written before the Holm column (c492922: `p (Holm, row's metrics)` in
comparison.md, `p_holm` in comparison.csv); their prose gave Holm values by hand.

What it reads and writes:
- mgor_ablation/sweep_v3/<row>/seed-<n>/metrics.jsonl: each run's final evaluation (read as
  `core run ... --continue` reads back a finished run: core.sweep.finished_metrics) and its
  budget (core.sweep.run_budget). From these it rebuilds the sweep's Variant objects and
  writes comparison.{md,csv,png} (8 rows, paired against `baseline`) and
  comparison_vs_pk_ce2.{md,csv,png} (the same runs without `baseline`, paired against pk_ce2).
- instruct_seeds/: written by bench/irm_seeds.py --summarise, which has no Holm column; the
  tables are rebuilt from irm/metrics.jsonl and irm++/metrics.jsonl and must be unchanged.
- baseline_twins/, muva_ablation/, quickstart_triplet/: NOT regenerated. Their sweeps kept no
  per-seed values (the run folders were not committed; comparison.{md,csv} hold only means,
  sds and the paired tests), so no Variant can be rebuilt. Holm of each row is printed from
  their CSV's paired-t p (6 significant digits) for the prose to be checked against.

Before anything is written, every old number must come back exactly: the new CSV less its
`p_holm` columns equals the old CSV cell for cell, and the new comparison.md less the Holm
column, the "; not after Holm ..." verdict suffix and the paragraph explaining them equals the
old comparison.md line for line. Run from the repository root, plugins on the path:

    python docs/results/regenerate_comparisons.py            # check only
    python docs/results/regenerate_comparisons.py --write    # check, then replace the files
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from core import statistics as stats
from core import sweep

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SWEEP_V3 = HERE / "mgor_ablation" / "sweep_v3"
MGOR_ROWS = ["baseline", "pk_ce2", "edps_plain", "edps_moil_nopair", "edps_moil_p0", "edps_moil", "edps_moil_p1",
             "full"]
MGOR_SEEDS = "0,1,2,3,4,5,6,7"
#: file stem in sweep_v3 -> the rows of its sweep, the first being its baseline
MGOR_TABLES = {"comparison": MGOR_ROWS, "comparison_vs_pk_ce2": MGOR_ROWS[1:]}
UNRECORDED = ("baseline_twins", "muva_ablation", "quickstart_triplet")
HOLM_SENTENCE = re.compile(r" Each metric is tested on its own: .*$")
HOLM_VERDICT = re.compile(r"; not after Holm over the row's \d+ metrics")


def mgor_variants(rows: list[str]) -> list[sweep.Variant]:
    """The sweep's variants as `core run` planned them, each filled from its run folders'
    final evaluations; a run without one stops the script (it would have to train)."""
    pipelines = [REPO / "pipelines" / "mgor_ablation" / f"{row}.yaml" for row in rows]
    variants = sweep.plan(pipelines, [], [], MGOR_SEEDS)
    for variant in variants:
        for seed in variant.seeds:
            run_dir = SWEEP_V3 / sweep._slug(variant.name) / f"seed-{seed}"  # core.sweep._run_dir's layout
            final = sweep.finished_metrics(run_dir)
            if final is None:
                raise SystemExit(f"{run_dir}: no final evaluation in metrics.jsonl; this script trains nothing, "
                                 "so that table cannot be rebuilt")
            variant.runs.append(run_dir)
            variant.metrics.append(final)
            variant.metric_seeds.append(seed)
            variant.budgets.append(sweep.run_budget(run_dir))
    return variants


def without_holm_md(text: str) -> str:
    """comparison.md as it was before the Holm column: the paired table's Holm cell, the
    verdict's Holm suffix and the paragraph's Holm sentences removed."""
    out, holm_at = [], None
    for line in text.split("\n"):
        line = HOLM_SENTENCE.sub("", line)
        if line.startswith("| variant | metric |"):
            cells = line.split(" | ")
            holm_at = cells.index("p (Holm, row's metrics)") if "p (Holm, row's metrics)" in cells else None
        elif not line.startswith("|"):
            holm_at = None
        if holm_at is not None and line.startswith("|"):
            cells = line.split("|")  # '' , cells..., '': the Holm cell is cells[holm_at + 1]
            del cells[holm_at + 1]
            line = "|".join(cells)
        out.append(HOLM_VERDICT.sub("", line))
    return "\n".join(out)


def check_csv(old: str, new: str, name: str) -> None:
    """Every cell of `old` but its p_holm ones (absent before the column) is in `new` unchanged."""
    old_rows, new_rows = list(csv.DictReader(io.StringIO(old))), list(csv.DictReader(io.StringIO(new)))
    old_cols = [c for c in next(csv.reader(io.StringIO(old))) if not c.endswith(" p_holm")]
    new_cols = [c for c in next(csv.reader(io.StringIO(new))) if not c.endswith(" p_holm")]
    if old_cols != new_cols:
        raise SystemExit(f"{name}: the CSV's columns other than p_holm changed: {set(old_cols) ^ set(new_cols)}")
    if len(old_rows) != len(new_rows):
        raise SystemExit(f"{name}: {len(old_rows)} rows before, {len(new_rows)} now")
    for o, n in zip(old_rows, new_rows):
        changed = [c for c in old_cols if o[c] != n[c]]
        if changed:
            raise SystemExit(f"{name}: row {o['variant']}: {changed[0]} was {o[changed[0]]}, is {n[changed[0]]}")


def check_md(old: str, new: str, name: str) -> None:
    """`new` less its Holm parts is `old` less its Holm parts (none before the column), line for line."""
    old, stripped = without_holm_md(old), without_holm_md(new)
    if stripped != old:
        for i, (a, b) in enumerate(zip(old.split("\n"), stripped.split("\n")), 1):
            if a != b:
                raise SystemExit(f"{name}: line {i} differs beyond the Holm column:\n  was {a}\n  is  {b}")
        raise SystemExit(f"{name}: the number of lines changed beyond the Holm column")


def holm_of_csv(path: Path) -> dict[str, dict[str, float]]:
    """row -> metric -> Holm-adjusted p, from a comparison.csv's paired-t p column."""
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    keys = [c[:-len(" p_paired_t")] for c in rows[0] if c.endswith(" p_paired_t")]
    out = {}
    for row in rows[1:]:
        ps = [float(row[f"{k} p_paired_t"]) if row[f"{k} p_paired_t"] else None for k in keys]
        out[row["variant"]] = dict(zip(keys, stats.holm(ps)))
    return out


def mgor(write: bool) -> None:
    for stem, rows in MGOR_TABLES.items():
        variants = mgor_variants(rows)
        markdown, table_csv = sweep.comparison(variants)
        check_md((SWEEP_V3 / f"{stem}.md").read_text(), markdown, f"sweep_v3/{stem}.md")
        check_csv((SWEEP_V3 / f"{stem}.csv").read_text(), table_csv, f"sweep_v3/{stem}.csv")
        print(f"sweep_v3/{stem}: every old number unchanged; Holm of mean/mAP:",
              ", ".join(f"{v['variant']} {float(v['mean/mAP p_holm']):.2g}"
                        for v in list(csv.DictReader(io.StringIO(table_csv)))[1:]))
        if write:
            with tempfile.TemporaryDirectory() as tmp:
                sweep.write_comparison(variants, Path(tmp))
                for suffix in (".md", ".csv", ".png"):
                    (SWEEP_V3 / f"{stem}{suffix}").write_bytes((Path(tmp) / f"comparison{suffix}").read_bytes())


def instruct_seeds() -> None:
    """bench/irm_seeds.py's tables (no Holm column) from the recorded metrics: unchanged."""
    folder = HERE / "instruct_seeds"
    script = [sys.executable, str(REPO / "bench" / "irm_seeds.py"), "--summarise"]
    expected = {folder / "irm" / "table.md": [str(folder / "irm")],
                folder / "irm++" / "table.md": [str(folder / "irm++")],
                folder / "irm++_vs_irm.md": ["docs/results/instruct_seeds/irm++", "--against",
                                            "docs/results/instruct_seeds/irm"]}
    for path, args in expected.items():
        made = subprocess.run([*script, *args], cwd=REPO, check=True, capture_output=True, text=True).stdout
        if made != path.read_text():
            raise SystemExit(f"{path.relative_to(REPO)}: bench/irm_seeds.py no longer writes it as committed")
    print("instruct_seeds: bench/irm_seeds.py rewrites its three tables byte for byte (it has no Holm column)")


def unrecorded() -> None:
    for name in UNRECORDED:
        print(f"{name}: not regenerated (no per-seed values recorded); Holm from comparison.csv's paired-t p:")
        for row, by_metric in holm_of_csv(HERE / name / "comparison.csv").items():
            print(f"  {row}: " + ", ".join(f"{k.split('/')[-1]} {p:.3g}" for k, p in by_metric.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the files once every check passed")
    args = parser.parse_args()
    mgor(args.write)
    instruct_seeds()
    unrecorded()


if __name__ == "__main__":
    main()
