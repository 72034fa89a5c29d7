"""bench/irm_seeds.py's table (the instruct-editor README's numbers): per task the mean and
95% t interval over seeds, and trained - untrained paired by seed, checked against scipy."""

import importlib.util
import json
from pathlib import Path

import numpy as np
from scipy import stats

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "irm_seeds.py"


def _module():
    spec = importlib.util.spec_from_file_location("irm_seeds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(table: str, title: str, task: str) -> list[str]:
    block = table.split(f"{title}:", 1)[1]
    line = next(x for x in block.splitlines() if x.startswith(f"| {task} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_table_pairs_trained_with_untrained_by_seed_and_keeps_a_rerun_seeds_last_run(tmp_path):
    before = {0: 10.0, 1: 2.0, 2: 7.0, 3: 4.0, 4: 9.0}
    after = {0: 31.0, 1: 20.0, 2: 30.0, 3: 21.0, 4: 33.0}  # paired gains 21, 18, 23, 17, 24
    lines = [{"seed": 3, "before": {"instruct/traditional/mAP": 99.0}, "after": {"instruct/traditional/mAP": 0.0}}]
    lines += [{"seed": s, "before": {"instruct/traditional/mAP": before[s]},
               "after": {"instruct/traditional/mAP": after[s], "instruct/free/traditional/mAP": 1.0}}
              for s in before]  # seed 3 again: its last run counts
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    table = _module().summarise(tmp_path)
    assert "seeds [0, 1, 2, 3, 4] (n = 5)" in table
    cells = _row(table, "task-specific", "traditional")
    gains = np.array([after[s] - before[s] for s in sorted(before)])
    half = stats.t.ppf(0.975, 4) * gains.std(ddof=1) / np.sqrt(5)
    assert cells[0].startswith(f"{np.mean(list(before.values())):.1f} [")
    assert cells[4] == f"{gains.mean():+.1f} [{gains.mean() - half:+.1f}, {gains.mean() + half:+.1f}]"
    assert cells[5] == f"{stats.ttest_rel(list(after.values()), list(before.values())).pvalue:.2g}"
    assert cells[6] == "0.062"  # every seed gained: the sign-flip floor 2 / 2^5
    assert _row(table, "task-free", "traditional")[4] == "—"  # no untrained value there


def test_against_pairs_two_sweeps_on_their_shared_seeds(tmp_path):
    row, base = tmp_path / "row", tmp_path / "base"
    for folder, values in ((row, {0: 30.0, 1: 25.0, 2: 28.0, 3: 26.0}), (base, {1: 20.0, 2: 27.0, 3: 21.0, 9: 0.0})):
        folder.mkdir()
        (folder / "metrics.jsonl").write_text("".join(
            json.dumps({"seed": s, "before": {}, "after": {"instruct/mAP": v}}) + "\n" for s, v in values.items()))
    table = _module().compare(row, base)
    line = next(x for x in table.splitlines() if x.startswith("| task-specific | mean |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    d = np.array([25.0 - 20.0, 28.0 - 27.0, 26.0 - 21.0])  # seeds 1, 2, 3
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert cells[2] == "3" and cells[3] == f"{d.mean():+.1f} [{d.mean() - half:+.1f}, {d.mean() + half:+.1f}]"
