"""The comparison table against independent references (the survivors of a mutation audit):
scipy.stats on the same numbers, and a sweep driven through run_sweep with a fake
trainer that writes hand-built run folders (seeds given out of order, one seed failing)."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sp

from core import sweep
from core.sweep import Variant


def _variant(name, values: dict, budget=(40, 2560), errors=()):
    v = Variant(name, Path("p.yaml"), [], list(values))
    for seed, value in values.items():  # dict order = the order the seeds finished in
        v.metrics.append({"synthetic/mAP": value, "synthetic/rank-1": value + 10})
        v.metric_seeds.append(seed)
        v.budgets.append(budget)
    v.errors = list(errors)
    return v


def _csv_rows(table: str) -> dict[str, dict[str, str]]:
    return {r["variant"]: r for r in csv.DictReader(io.StringIO(table))}


def _main_table(markdown: str) -> list[list[str]]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| variant | n |"))
    end = lines.index("", start)
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[start + 2:end]]


def _scipy_paired(base: dict, row: dict):
    seeds = sorted(set(base) & set(row))
    a, b = np.array([row[s] for s in seeds]), np.array([base[s] for s in seeds])
    d = a - b
    low, high = sp.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=sp.sem(d))
    p_t = sp.ttest_rel(a, b).pvalue
    p_flip = sp.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                 alternative="two-sided").pvalue
    return seeds, d, low, high, p_t, p_flip


BASE = {2: 29.0, 0: 30.0, 1: 31.5, 3: 30.4}  # --seeds 2,0,1,3
ROW = {2: 30.9, 0: 31.2, 1: 36.0, 3: 31.3}  # seed 1 fails in the sweep; row and base covary on 0, 2, 3


def test_run_sweep_pairs_each_value_with_its_own_seed_across_a_failed_seed(tmp_path, monkeypatch):
    """Seeds given out of order and one seed of the row failing: the row is compared with the
    baseline on the shared seeds only (0, 2, 3), each value with its own seed's baseline value,
    and every number of the CSV equals scipy's on those pairs. The failed seed is reported,
    the seeds column lists the seeds that finished, and the budget is the run's last eval."""
    import core.runner

    def fake_run(pipeline, overrides, run_dir, **_):
        seed = int(overrides[-1].split("=")[1])
        values = BASE if pipeline.name == "base.yaml" else ROW
        if pipeline.name == "row.yaml" and seed == 1:
            raise RuntimeError("diverged")
        run_dir.mkdir(parents=True)
        value = values[seed]
        records = [{"event": "eval", "tag": "epoch-1", "global_step": 2, "images_seen": 32, "synthetic/mAP": 1.0},
                   {"event": "eval", "tag": "final", "global_step": 4, "images_seen": 64, "synthetic/mAP": value}]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return type("Result", (), {"metrics": {"synthetic/mAP": value}})()

    monkeypatch.setattr(core.runner, "run", fake_run)
    monkeypatch.setattr(sweep, "check_variants", lambda variants: None)  # the pipeline files are not there
    variants = [Variant("base", tmp_path / "base.yaml", [], [2, 0, 1, 3]),
                Variant("row", tmp_path / "row.yaml", [], [2, 0, 1, 3])]
    sweep.run_sweep(variants, tmp_path / "sweep")

    rows = {r["variant"]: r for r in csv.DictReader((tmp_path / "sweep" / "comparison.csv").open())}
    row = rows["row"]
    assert row["seeds"] == "2 0 3" and row["seeds_ok"] == "3"
    assert row["status"] == "partly failed: seed 1: RuntimeError: diverged"
    assert (row["steps"], row["images_seen"]) == ("4", "64")  # the last evaluation, not the first
    shared = {s: ROW[s] for s in (2, 0, 3)}
    seeds, d, low, high, p_t, p_flip = _scipy_paired(BASE, shared)
    assert seeds == [0, 2, 3]
    assert row["synthetic/mAP shared_seeds"] == "3"
    got = [float(row[f"synthetic/mAP {c}"]) for c in ("diff_mean", "diff_ci_low", "diff_ci_high", "p_paired_t",
                                                       "p_sign_flip")]
    assert got == pytest.approx([d.mean(), low, high, p_t, p_flip], rel=1e-5)
    assert float(row["synthetic/mAP mean"]) == pytest.approx(np.mean(list(shared.values())), rel=1e-5)
    markdown = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "Every run trained the same budget" in markdown
    assert f"| row | synthetic/mAP | 3 | {d.mean():+.2f} [{low:+.2f}, {high:+.2f}] |" in markdown


def test_comparison_pairs_by_seed_not_by_position():
    """The same check without run_sweep: metrics recorded in a different seed order in the two
    rows, and seeds that only one row has (4 in the baseline, 7 in the row) left out."""
    base = {3: 30.5, 1: 31.0, 0: 30.0, 2: 29.5, 4: 50.0}
    row = {0: 30.9, 2: 31.4, 1: 31.2, 3: 32.5, 7: 0.0}
    _, table = sweep.comparison([_variant("base", base), _variant("row", row)])
    r = _csv_rows(table)["row"]
    seeds, d, low, high, p_t, p_flip = _scipy_paired(base, row)
    assert r["synthetic/mAP shared_seeds"] == str(len(seeds)) == "4"
    got = [float(r[f"synthetic/mAP {c}"]) for c in ("diff_mean", "diff_ci_low", "diff_ci_high", "p_paired_t",
                                                     "p_sign_flip")]
    assert got == pytest.approx([d.mean(), low, high, p_t, p_flip], rel=1e-5)


# d = 1.0, 0.2, 1.4, 0.3, 1.1 on seeds 0..4: paired p (scipy) between 0.01 and 0.05
B5 = {0: 30.0, 1: 31.0, 2: 29.5, 3: 30.5, 4: 30.2}
MID = {s: v + dd for (s, v), dd in zip(B5.items(), (1.0, 0.2, 1.4, 0.3, 1.1))}


def _marks(markdown):
    return {cells[0]: cells[4] for cells in _main_table(markdown)}


def test_significance_uses_the_given_alpha_and_a_strict_inequality():
    p = sp.ttest_rel(list(MID.values()), list(B5.values())).pvalue
    assert 0.01 < p < 0.05  # the premise
    variants = [_variant("base", B5), _variant("mid", MID)]
    for alpha, mark, flag in ((0.05, " *", "true"), (0.01, " †", "false"), (p, " †", "false")):
        markdown, table = sweep.comparison(variants, alpha=alpha)
        assert _marks(markdown)["mid"].endswith(mark), (alpha, _marks(markdown))
        assert _csv_rows(table)["mid"]["synthetic/mAP significant"] == flag, alpha
        assert _csv_rows(table)["base"]["synthetic/mAP significant"] == ""  # the baseline is not compared
    markdown, _ = sweep.comparison(variants, alpha=0.01)
    assert "not significant (p ≥ 0.01)" in markdown


def test_images_seen_alone_differing_is_flagged():
    markdown, _ = sweep.comparison([_variant("base", B5, budget=(40, 2560)),
                                    _variant("bigger", B5, budget=(40, 5120))])
    assert "**Training budgets differ**: training images seen differ (base: 2,560; bigger: 5,120)" in markdown
    assert "optimisation steps differ" not in markdown


def test_an_unknown_budget_is_not_a_difference():
    markdown, _ = sweep.comparison([_variant("base", B5), _variant("old", B5, budget=(None, None))])
    assert "Training budgets differ" not in markdown


def test_rows_keep_the_order_they_were_given_in():
    names = ["zeta", "alpha", "mid"]
    variants = [_variant(n, {s: v + i for s, v in B5.items()}) for i, n in enumerate(names)]
    markdown, table = sweep.comparison(variants)
    assert [cells[0] for cells in _main_table(markdown)] == names
    assert list(_csv_rows(table)) == names
    assert "Baseline: the first row (zeta)" in markdown


def test_primary_metric_is_mean_map_else_the_first_map():
    assert sweep.primary_key(["a/mAP", "a/rank-1", "b/mAP", "mean/mAP"]) == "mean/mAP"
    assert sweep.primary_key(["a/mAP", "a/rank-1", "b/mAP"]) == "a/mAP"
    assert sweep.primary_key(["a/rank-1", "a/mINP"]) == "a/rank-1"
    assert sweep.primary_key([]) is None
    two_sets = [_variant(n, vals) for n, vals in (("base", B5), ("mid", MID))]
    for v in two_sets:
        for m in v.metrics:
            m["mean/mAP"] = m["synthetic/mAP"] + 1
    markdown, _ = sweep.comparison(two_sets)
    assert "## Seeds needed (mean/mAP)" in markdown


def test_a_row_whose_runs_all_failed_or_gave_no_metrics_is_failed():
    v = _variant("row", {}, errors=["seed 1: RuntimeError: boom"])
    v.runs.append(Path("seed-0"))  # seed 0 ran but gave no final metrics
    assert sweep._status(v) == "failed: seed 1: RuntimeError: boom"


def test_a_sign_flip_p_equal_to_alpha_is_not_significant_either():
    """With alpha = 1/16 and 5 seeds that all moved one way, the sign-flip p is its floor 2/2^5 =
    0.0625 = alpha: not below alpha, so the note must appear (as for any p >= alpha)."""
    far = {s: v + 3.0 + 0.1 * s for s, v in B5.items()}
    markdown, _ = sweep.comparison([_variant("base", B5), _variant("far", far)], alpha=0.0625)
    assert "sign-flip p ≥ 0.0625 (its floor is 0.0625 with n = 5)" in markdown


# --- two variants with the same name (an edited copy that kept `name:`) --------------------------------

def test_two_variants_with_the_same_name_keep_their_own_numbers(tmp_path):
    """`core run a.yaml b.yaml` where both files say `name: tiny` (a copy edited for an ablation):
    each row must show its own mean, and the two must not be planned into one run folder."""
    import copy

    import yaml

    from core.testing import TINY_PIPELINE

    markdown, table = sweep.comparison([_variant("tiny", {0: 30.0, 1: 31.0}), _variant("tiny", {0: 40.0, 1: 42.0})])
    cells = [row[4].split(" ")[0] for row in _main_table(markdown)]
    assert cells == ["30.50", "41.00"]
    paths = []
    for name, margin in (("a", 0.1), ("b", 0.3)):
        config = copy.deepcopy(TINY_PIPELINE)
        config["losses"][1]["margin"] = margin
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(config))
    names = [v.name for v in sweep.plan(paths, [], [], "0")]
    assert len({sweep._slug(n) for n in names}) == 2, names
    assert names == ["tiny", "tiny (b.yaml)"]


def test_labels_that_share_a_folder_name_get_their_own_folders(tmp_path):
    """`a b` and `a_b` give one slug, `A` and `a` one folder on a case-insensitive disk:
    the second of each must get a label of its own, or its runs land in the first's."""
    import copy

    import yaml

    from core.testing import TINY_PIPELINE

    paths = []
    for i, name in enumerate(("a b", "a_b", "A_B", "other")):
        config = copy.deepcopy(TINY_PIPELINE)
        config["name"] = name
        paths.append(tmp_path / f"p{i}.yaml")
        paths[-1].write_text(yaml.safe_dump(config))
    names = [v.name for v in sweep.plan(paths, [], [], "0")]
    folders = [sweep._slug(n).lower() for n in names]
    assert len(set(folders)) == 4, names
    assert names[0] == "a b" and names[3] == "other"  # a label that is free stays as written
    # as for an exact repeat (the docstring): the file name first, then a counter
    assert names[1:3] == ["a_b (p1.yaml)", "A_B (p2.yaml)"]


def test_labels_that_never_shared_a_folder_keep_the_names_they_had(tmp_path):
    """`core run --continue` finds a sweep's runs by its labels' folders: labels whose folders
    were distinct before folders counted (e1c8a77) must come out as they did, or an existing
    sweep would start its runs again in new folders. The reference is the rule before it,
    restated: name and grid values, then the file name for an exact repeat, then a counter."""
    import copy
    import itertools

    import yaml

    from core.testing import TINY_PIPELINE

    paths = []
    for stem, name in (("base", "tiny"), ("wide", "tiny-wide"), ("copy", "tiny")):
        config = copy.deepcopy(TINY_PIPELINE)
        config["name"] = name
        paths.append(tmp_path / f"{stem}.yaml")
        paths[-1].write_text(yaml.safe_dump(config))
    grid = ["stages.0.optimizer.lr=0.1,0.01,[1, 2]", "sampler.k=2,4"]
    reference, taken = [], set()
    for path, name in zip(paths, ("tiny", "tiny-wide", "tiny")):
        for combo in itertools.product(*sweep.parse_grid(grid)):
            label = " ".join([name, *combo])
            if label in taken:
                label = f"{label} ({path.name})"
            unique, k = label, 2
            while unique in taken:
                unique, k = f"{label} #{k}", k + 1
            taken.add(unique)
            reference.append(unique)
    assert [v.name for v in sweep.plan(paths, [], grid, "0")] == reference


def test_long_labels_that_differ_past_the_cut_get_their_own_folders():
    base = "a-pipeline-with-a-long-name " + " ".join(f"stages.0.optimizer.param{i}=0.00{i}" for i in range(5))
    first, second = base + " x=1", base + " x=2"
    assert len(sweep._slug(first)) == 120 and sweep._slug(first) != sweep._slug(second)
    assert sweep._slug("short label=1") == "short_label=1"
