"""Instruct-ReID's CPU twins over several training seeds: per task and setting, mean and
95% t interval of mAP, mAP-tau and rank-1, the untrained model (evaluated before training
in the same runs) and the paired difference trained - untrained, the numbers of
plugins/instruct-editor/README.md.

    OMP_NUM_THREADS=1 python bench/irm_seeds.py --pipeline pipelines/irm_synthetic.yaml \
        --seeds 0 1 2 3 4 --out runs/irm-seeds            # one run after another
    python bench/irm_seeds.py --summarise runs/irm-seeds    # the table again from the runs
    python bench/irm_seeds.py --summarise runs/irm++-seeds --against runs/irm-seeds
                                     # irm++ - irm per task, paired by seed (same budget)

The world (its seed) stays fixed; `seed` (initialisation, sampling, augmentation) varies.
Each run's metrics are appended to <out>/metrics.jsonl as {"seed", "before", "after"}: every
metric of the evaluation before training (the untrained model) and of the last one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TASKS = ("traditional", "clothes-changing", "clothes-template", "visible-infrared", "text-to-image",
         "language-instructed")
METRICS = ("mAP", "mAP_tau", "rank-1")


def find(metrics: dict[str, float], key: str) -> float | None:
    """The metric `key` of the test set (keys are prefixed by the test set's name)."""
    hits = [v for k, v in metrics.items() if k.split("/", 1)[-1] == key]
    return hits[0] if hits else None


def per_seed(rows: list[dict], stage: str, prefix: str, task: str, metric: str) -> dict[int, float]:
    """seed -> `metric` of `task` ("mean": over tasks) in setting `prefix` ("" task-specific,
    "free/" task-free) at `stage` ("before" / "after" training), for the runs that have it."""
    key = f"{prefix}{task}/{metric}" if task != "mean" else f"{prefix}{metric}"
    found = {r["seed"]: find(r[stage], key) for r in rows}
    return {seed: v for seed, v in found.items() if v is not None}


def summarise(out: Path) -> str:
    """Per task and setting: mean and 95% t interval of each metric after training, the
    untrained model's mAP (evaluated before training in the same run), and the paired
    difference trained - untrained over the seeds (`core.statistics.compare_paired`: mean,
    t interval, paired t-test p and the exact sign-flip p)."""
    from core.statistics import compare_paired, summarize

    rows = _rows(out)
    seeds = sorted(r["seed"] for r in rows)
    lines = [f"seeds {seeds} (n = {len(rows)}); mean [95% t interval], in %; trained - untrained: "
             "paired over the seeds (t-test p, exact sign-flip p)", ""]

    def cell(values: list[float]) -> str:
        s = summarize(values)
        if s.n == 0:
            return "—"
        return f"{s.mean:.1f}" if s.low is None else f"{s.mean:.1f} [{s.low:.1f}, {s.high:.1f}]"

    for prefix, title in (("", "task-specific"), ("free/", "task-free")):
        lines.append(f"{title}:")
        lines.append("| task | untrained mAP | " + " | ".join(METRICS) + " | mAP trained - untrained | p (t) | p (sign-flip) |")
        lines.append("|---" * (5 + len(METRICS)) + "|")
        for task in TASKS + ("mean",):
            before = per_seed(rows, "before", prefix, task, "mAP")
            cells = [cell(list(before.values()))] + \
                [cell(list(per_seed(rows, "after", prefix, task, m).values())) for m in METRICS]
            paired = compare_paired(before, per_seed(rows, "after", prefix, task, "mAP"))
            if paired.n >= 2:
                cells += [f"{paired.mean:+.1f} [{paired.low:+.1f}, {paired.high:+.1f}]", f"{paired.p_t:.2g}",
                          f"{paired.p_sign_flip:.2g}"]
            else:
                cells += ["—", "—", "—"]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return list({r["seed"]: r for r in rows}.values())  # a seed run twice: its last run


def compare(out: Path, baseline: Path, metric: str = "mAP") -> str:
    """`metric` after training of the runs in `out` minus those in `baseline`, per task and
    setting, paired by seed (`core.statistics.compare_paired`): both must be trained on the
    same budget for the difference to mean anything."""
    from core.statistics import compare_paired

    rows, base = _rows(out), _rows(baseline)
    lines = [f"{out} - {baseline}, {metric} after training, paired by seed; mean [95% t interval], in %", "",
             "| setting | task | n | difference | p (t) | p (sign-flip) |", "|---|---|---|---|---|---|"]
    for prefix, title in (("", "task-specific"), ("free/", "task-free")):
        for task in TASKS + ("mean",):
            d = compare_paired(per_seed(base, "after", prefix, task, metric), per_seed(rows, "after", prefix, task, metric))
            if d.n < 2:
                continue
            lines.append(f"| {title} | {task} | {d.n} | {d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}] | "
                         f"{d.p_t:.2g} | {d.p_sign_flip:.2g} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="pipelines/irm_synthetic.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default="runs/irm-seeds")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--summarise", metavar="OUT", help="only print the table of an earlier --out")
    parser.add_argument("--against", metavar="BASELINE", help="with --summarise: OUT - BASELINE, paired by seed")
    args = parser.parse_args()
    if args.summarise:
        print(compare(Path(args.summarise), Path(args.against)) if args.against else summarise(Path(args.summarise)))
        return
    from core.runner import run

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        result = run(args.pipeline, [f"seed={seed}", "trainer.eval_before=true", "trainer.progress=false",
                                     *args.overrides], run_dir=out / f"seed{seed}")
        before, after = _before_and_after(result.run_dir)
        with (out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"seed": seed, "before": before, "after": after or result.metrics}) + "\n")
        print(f"seed {seed} done: {result.run_dir}", flush=True)
    print(summarise(out))


def _before_and_after(run_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """The first (before training) and last evaluation records of a run's metrics.jsonl."""
    evals = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        values = {k: v for k, v in record.items() if isinstance(v, (int, float)) and ("mAP" in k or "rank-" in k)}
        if values:
            evals.append(values)
    return (evals[0] if evals else {}), (evals[-1] if evals else {})


if __name__ == "__main__":
    main()
