"""The statistics of comparison tables (core/statistics.py, core/sweep.py; issue 20),
against hand-worked examples and scipy."""

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sp

from core import statistics as st
from core import sweep
from core.sweep import Variant

# t_{0.975, 4} from a printed t table; with s = sqrt(2.5) and n = 5:
T_975_4 = 2.7764


def test_summary_of_one_to_five_is_the_hand_worked_t_interval():
    s = st.summarize([1, 2, 3, 4, 5])
    half = T_975_4 * np.sqrt(2.5) / np.sqrt(5)  # 1.9632
    assert (s.n, s.mean) == (5, 3.0)
    assert s.std == pytest.approx(np.sqrt(2.5))  # sample std (ddof = 1), not 1.414 (ddof = 0)
    assert (s.low, s.high) == pytest.approx((3 - half, 3 + half), abs=2e-4)


def test_summary_interval_matches_scipy_on_random_data():
    x = np.random.default_rng(0).normal(30, 2, size=7)
    low, high = sp.t.interval(0.95, 6, loc=x.mean(), scale=sp.sem(x))
    s = st.summarize(x)
    assert (s.low, s.high) == pytest.approx((low, high), rel=1e-12)


def test_one_value_has_no_spread_and_no_interval():
    s = st.summarize([32.37])
    assert (s.n, s.mean, s.std, s.low, s.high) == (1, 32.37, None, None, None)
    assert st.summarize([]).n == 0 and st.summarize([]).mean is None


def test_paired_difference_is_hand_worked_and_matches_scipy():
    base = {0: 10.0, 1: 11.0, 2: 12.0, 3: 13.0, 9: 50.0}  # seed 9: the row lacks it
    row = {0: 11.0, 1: 13.0, 2: 12.5, 3: 14.5, 7: 0.0}
    pair = st.compare_paired(base, row)
    # d = 1, 2, 0.5, 1.5: mean 1.25, sd sqrt(1.25 / 3), t = 1.25 / (sd / 2) = 3.873 (df 3)
    assert pair.seeds == [0, 1, 2, 3] and pair.n == 4
    assert pair.mean == pytest.approx(1.25)
    assert pair.std == pytest.approx(np.sqrt(1.25 / 3))
    t = 1.25 / (np.sqrt(1.25 / 3) / 2)
    assert t == pytest.approx(3.873, abs=1e-3)
    assert pair.p_t == pytest.approx(2 * sp.t.sf(t, 3), rel=1e-9)
    assert pair.p_t == pytest.approx(sp.ttest_rel([11, 13, 12.5, 14.5], [10, 11, 12, 13]).pvalue, rel=1e-9)
    # every sign flip lowers |sum| = 5 except flipping all: 2 of 16 patterns
    assert pair.p_sign_flip == pytest.approx(2 / 16)


def test_sign_flip_enumerates_every_pattern_by_hand():
    # d = 1, -1, 2: the 8 signed sums are 2, -2, 4, 0, 0, -4, 2, -2; |sum| >= 2 in 6
    assert st.sign_flip_p([1, -1, 2]) == pytest.approx(6 / 8)
    assert st.sign_flip_p([3.0] * 5) == pytest.approx(2 / 32)  # the floor of n = 5
    assert st.sign_flip_p(list(range(11))) is None  # beyond exact enumeration
    assert st.sign_flip_p([]) is None


@pytest.mark.parametrize("seed", range(4))
def test_sign_flip_matches_scipy_exact_permutation_test(seed):
    d = np.random.default_rng(seed).normal(0.3, 1.0, size=6 + seed)
    reference = sp.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                    alternative="two-sided").pvalue
    assert st.sign_flip_p(d) == pytest.approx(reference, rel=1e-9)


def test_one_shared_seed_gives_a_difference_but_no_test():
    pair = st.compare_paired({0: 30.0, 1: 31.0}, {1: 33.0})
    assert (pair.n, pair.mean, pair.p_t, pair.low) == (1, 2.0, None, None)
    assert not pair.significant(0.05)
    assert st.compare_paired({0: 1.0}, {1: 2.0}).n == 0


def test_seeds_needed_matches_the_standard_matched_pairs_power_table():
    # G*Power, t tests - means: matched pairs, two-tailed, alpha 0.05, power 0.8:
    # effect size dz = 1.0 -> 10 pairs, dz = 0.5 -> 34 pairs
    assert st.seeds_needed(1.0, 1.0) == 10
    assert st.seeds_needed(2.0, 1.0) == 34
    assert st.seeds_needed(1.0, -1.0) == 10


def variant(name, values: dict, budget=(40, 2560), errors=()):
    v = Variant(name, Path("p.yaml"), [], list(values))
    for seed, value in values.items():
        v.metrics.append({"synthetic/mAP": value, "synthetic/rank-1": value + 10})
        v.metric_seeds.append(seed)
        v.budgets.append(budget)
    v.errors = list(errors)
    return v


BASE = {0: 30.0, 1: 31.0, 2: 29.5, 3: 30.5, 4: 30.2}


def test_comparison_marks_noise_and_real_differences():
    far = {s: v + 3.0 + 0.1 * s for s, v in BASE.items()}  # +3 points on every seed
    near = {0: 30.4, 1: 30.6, 2: 29.9, 3: 30.1, 4: 30.6}  # within the noise
    markdown, table = sweep.comparison([variant("base", BASE), variant("far", far), variant("near", near)])
    rows: dict[str, str] = {}
    for line in markdown.splitlines():  # the first table: one line per variant
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0][2:], line)
    assert " *" in rows["far"].split(" | ")[4] and " †" in rows["near"].split(" | ")[4]
    d = np.array([far[s] - BASE[s] for s in BASE])
    p = sp.ttest_1samp(d, 0).pvalue
    assert f"| far | synthetic/mAP | 5 | +{d.mean():.2f} [" in markdown
    assert f"{p:.1e}" in markdown or f"{p:.3f}" in markdown
    assert "| near | synthetic/mAP | 5 |" in markdown and "not significant (p ≥ 0.05)" in markdown
    # the sign-flip test of 5 seeds cannot reach 0.05: said where the t-test is significant
    assert "its floor is 0.0625 with n = 5" in markdown
    assert "Every run trained the same budget" in markdown
    assert "## Seeds needed (synthetic/mAP)" in markdown
    header = table.splitlines()[0].split(",")
    assert {"synthetic/mAP mean", "synthetic/mAP std", "synthetic/mAP ci_low", "synthetic/mAP p_paired_t",
            "synthetic/mAP p_sign_flip", "steps", "images_seen"} <= set(header)


def test_one_seed_and_an_empty_row_keep_the_table_whole():
    variants = [variant("base", {0: 30.0}), variant("broken", {}, errors=["seed 0: ValueError: no"]),
                variant("other", {0: 31.0})]
    markdown, _ = sweep.comparison(variants)
    assert "30.00 (n = 1: no interval)" in markdown and "± 0.00" not in markdown
    lines = markdown.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| variant | n |")))
    main = lines[start:lines.index("", start)]
    widths = {line.count("|") for line in main}
    assert len(widths) == 1, main  # the empty row has as many cells as the header
    assert "| broken | 0 | - | - | - | - | failed: seed 0: ValueError: no |" in markdown
    assert "no test (n = 1 shared seed)" in markdown
    assert "| broken | synthetic/mAP | 0 | - | - | - | - | no shared seed |" in markdown
    paired = lines[lines.index(next(line for line in lines if line.startswith("| variant | metric |"))):]
    assert len({line.count("|") for line in paired if line.startswith("|")}) == 1, paired


def test_rows_with_different_budgets_are_flagged():
    markdown, _ = sweep.comparison([variant("base", BASE), variant("short", BASE, budget=(20, 1280))])
    assert "**Training budgets differ**: optimisation steps differ (base: 40; short: 20)" in markdown


def test_no_metric_at_all_still_gives_a_table():
    markdown, table = sweep.comparison([variant("a", {}, errors=["seed 0: boom"])])
    assert "| a | 0 | - | - | failed: seed 0: boom |" in markdown
    assert table.splitlines()[0].startswith("variant,seeds_ok")


def test_the_plot_is_written(tmp_path):
    from PIL import Image

    variants = [variant("base", BASE), variant("one", {0: 33.0}), variant("none", {})]
    fig = sweep.plot_comparison(variants, tmp_path / "comparison.png")
    with Image.open(tmp_path / "comparison.png") as picture:
        assert picture.format == "PNG" and picture.size == tuple(round(v) for v in fig.get_size_inches() * fig.dpi)
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(axes) == {"synthetic/mAP", "synthetic/rank-1"}
    ax = axes["synthetic/mAP"]
    seeds = [ln for ln in ax.get_lines() if ln.get_color() == "grey"]
    assert sorted(x for ln in seeds for x in ln.get_xdata()) == sorted([*BASE.values(), 33.0])
    base_mean = np.mean(list(BASE.values()))  # the dashed baseline line sits at the base row's mean
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_xdata()[0] == pytest.approx(base_mean)
    bars = ax.containers[0]  # the base row's 95% t interval, from scipy's t quantile
    (segment,) = bars.lines[2][0].get_segments()
    half = sp.t.ppf(0.975, len(BASE) - 1) * np.std(list(BASE.values()), ddof=1) / np.sqrt(len(BASE))
    assert segment[0][0] == pytest.approx(base_mean - half) and segment[1][0] == pytest.approx(base_mean + half)


# --- ST2, ST7, and the seeds_needed NaN bug --------------------------------------------------------------

@pytest.mark.parametrize("level", [0.8, 0.9, 0.99])
def test_t_interval_honours_its_level(level):
    from scipy import stats as sp
    from core import statistics as st
    x = np.random.default_rng(1).normal(size=6)
    expected = sp.t.interval(level, 5, loc=x.mean(), scale=sp.sem(x))
    assert st.t_interval(x, level) == pytest.approx(expected, rel=1e-12)
    s = st.summarize(x, level)
    assert (s.low, s.high) == pytest.approx(expected, rel=1e-12)


def test_paired_differences_without_spread():
    from core import statistics as st
    moved = st.compare_paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 3.0, 2: 4.0})  # +1 on every seed
    assert moved.p_t == 0.0 and moved.significant(0.05)
    same = st.compare_paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert same.p_t == 1.0 and not same.significant(0.05)


def _simulated_power(dz, n, draws=40_000, alpha=0.05):
    """The power of a two-sided paired t-test by simulation: the share of `draws` samples of n
    paired differences ~ N(dz, 1) whose t statistic lies beyond the critical value."""
    d = np.random.default_rng(int(1000 * dz) + n).normal(dz, 1.0, size=(draws, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    return float(np.mean(np.abs(t) > sp.t.ppf(1 - alpha / 2, n - 1)))


@pytest.mark.parametrize("dz", [0.5, 1.0, 2.0, 3.0, 4.5, 5.2434918648310385, 7.5, 12.5, 19.625])
def test_seeds_needed_is_the_least_n_with_enough_power(dz):
    """Against simulated t-tests (sd of the estimate ~0.002): power >= 0.8 with the returned n,
    below it with one seed fewer. Large standardised effects (a few tenths of a point of seed
    noise against a 1-point effect) made scipy's nct.cdf NaN and skipped the right n."""
    n = st.seeds_needed(1.0, dz)
    assert _simulated_power(dz, n) >= 0.8 - 0.01, n
    assert n == 2 or _simulated_power(dz, n - 1) < 0.8 + 0.01, n


def test_seeds_needed_does_not_grow_with_the_effect():
    from core import statistics as st
    needed = [st.seeds_needed(0.2, e) for e in np.linspace(0.5, 4.0, 141)]
    assert all(a >= b for a, b in zip(needed, needed[1:])), needed


def holm_by_definition(p_values):
    """Holm (1979) as the procedure is written: walk the p-values from the smallest; the
    i-th (1-based) is compared with alpha / (m - i + 1), so its adjusted value is
    (m - i + 1) p_(i), never below the one before it, capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    m, adjusted, best = len(p_values), [0.0] * len(p_values), 0.0
    for i, index in enumerate(order, start=1):
        best = max(best, (m - i + 1) * p_values[index])
        adjusted[index] = min(1.0, best)
    return adjusted


def test_holm_matches_the_procedure_and_a_hand_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 1*0.04)
    assert st.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = list(rng.uniform(0, 0.3, rng.integers(1, 7)))
        assert st.holm(p) == pytest.approx(holm_by_definition(p))
    assert st.holm([0.2, None, 0.01]) == pytest.approx([0.2, None, 0.02])  # m = 2: no test, no count
    assert st.holm([0.6, 0.7]) == [1.0, 1.0] and st.holm([0.04]) == [0.04]


def test_a_metric_significant_alone_but_not_after_holm_says_so():
    """Five metrics each tested at 0.05: mAP p ~ 0.03, the rest nowhere near. The t-test
    verdict stands, the table adds the Holm-adjusted p (over the row's metrics) and says the
    difference is not significant after it; the CSV has the same p_holm."""
    base = {0: 30.0, 1: 31.0, 2: 29.5, 3: 30.5, 4: 30.2}
    row = {s: v + d for (s, v), d in zip(base.items(), (1.0, 0.2, 1.4, 0.3, 1.1))}
    keys = ["synthetic/mAP", "synthetic/rank-1", "synthetic/rank-5"]

    def make(name, values, noise):
        v = Variant(name, Path("p.yaml"), [], list(values))
        for seed, value in values.items():
            v.metrics.append({"synthetic/mAP": value, "synthetic/rank-1": 50 + noise[seed],
                              "synthetic/rank-5": 70 - noise[seed]})
            v.metric_seeds.append(seed)
            v.budgets.append((40, 2560))
        return v

    variants = [make("base", base, {s: 0.0 for s in base}), make("row", row, {0: 1, 1: -2, 2: 0.5, 3: 2, 4: -1})]
    p = [sp.ttest_rel([v.metrics[i][k] for i in range(5)], [variants[0].metrics[i][k] for i in range(5)]).pvalue
         for k in keys for v in variants[1:]]
    assert p[0] < 0.05 and 3 * p[0] >= 0.05  # the premise: significant alone, not after Holm
    markdown, table = sweep.comparison(variants)
    line = next(x for x in markdown.splitlines() if x.startswith("| row | synthetic/mAP |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert float(cells[6]) == pytest.approx(holm_by_definition(p)[0], abs=5e-4), line
    assert cells[7].startswith("significant (p < 0.05);") and cells[7].endswith(
        "; not after Holm over the row's 3 metrics"), line
    assert "name one primary metric before the runs (here synthetic/mAP)" in markdown
    csv_row = next(r for r in csv.DictReader(io.StringIO(table)) if r["variant"] == "row")
    assert float(csv_row["synthetic/mAP p_holm"]) == pytest.approx(holm_by_definition(p)[0], rel=1e-5)


def test_holm_adjusts_over_each_rows_metrics_not_the_whole_table():
    """The family is one row's metrics (m = metrics of that row), not every row and metric of
    the table: with two rows and two metrics each, a row's adjusted p comes from its own two
    p-values (scipy's paired t), whatever the other row's are. At α equal to that adjusted
    p the row is not significant after Holm (significant means p < α), its t-test alone is."""
    base = {s: 30.0 + 0.1 * s for s in range(5)}
    keys = ["synthetic/mAP", "synthetic/rank-1"]

    def make(name, shift, noise):
        v = Variant(name, Path("p.yaml"), [], list(base))
        for seed, value in base.items():
            v.metrics.append({keys[0]: value + shift + noise[seed], keys[1]: 50 + noise[seed] * 3})
            v.metric_seeds.append(seed)
        return v

    noise = {0: 0.3, 1: -0.2, 2: 0.4, 3: -0.1, 4: 0.0}
    rows = [make("base", 0.0, {s: 0.0 for s in base}), make("a", 1.0, noise), make("b", 0.4, noise)]
    markdown, table = sweep.comparison(rows)
    for v in rows[1:]:
        p = [sp.ttest_rel([m[k] for m in v.metrics], [m[k] for m in rows[0].metrics]).pvalue for k in keys]
        expected = holm_by_definition(p)
        csv_row = next(r for r in csv.DictReader(io.StringIO(table)) if r["variant"] == v.name)
        assert [float(csv_row[f"{k} p_holm"]) for k in keys] == pytest.approx(expected, rel=1e-5), v.name
    p_a = [sp.ttest_rel([m[k] for m in rows[1].metrics], [m[k] for m in rows[0].metrics]).pvalue for k in keys]
    at = holm_by_definition(p_a)[0]
    assert p_a[0] < at  # the premise: mAP significant alone at α = its adjusted p
    markdown, _ = sweep.comparison(rows, alpha=at)
    line = next(x for x in markdown.splitlines() if x.startswith("| a | synthetic/mAP |"))
    assert line.endswith("; not after Holm over the row's 2 metrics |"), line
