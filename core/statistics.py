"""The statistics of a comparison table (issue 20): is a difference between two rows of an
ablation larger than the seed noise?

- `summarize`: n, mean, sample standard deviation (ddof = 1) and the 95% confidence
  interval of the mean from Student's t distribution, mean ± t_{0.975, n-1} s / sqrt(n).
  With n = 1 there is no spread and no interval (None), never "± 0.00".
- `compare_paired`: the rows of a sweep share seeds (seed s of both rows draws the same
  initial weights and, where the samplers agree, the same batches), so the differences
  d_s = row_s - baseline_s are compared, not the two means: mean difference, its t
  interval, the paired t-test (scipy.stats.ttest_rel) and, for n <= 10 shared seeds, the
  exact sign-flip permutation test: under "no difference" each d_s is as likely to be
  -d_s, so p = (number of the 2^n sign patterns whose |mean| is at least the observed
  |mean|) / 2^n. It assumes no normality, but cannot go below 2 / 2^n (0.0625 for n = 5).
- `holm`: Holm's step-down adjustment (Holm 1979) of the p-values of one row's metrics:
  five metrics each tested at 0.05 call at least one "significant" by luck far more often
  than 5% of the time. Sorted ascending, p_(i) becomes max_{j <= i} min(1, (m - j + 1) p_(j));
  it controls the family-wise error whatever the metrics' correlation.
- `seeds_needed`: how many seeds a paired t-test needs to detect an effect of a given
  size with given power, from the standard deviation of the paired differences
  (noncentral t power, as G*Power's "matched pairs" computes it).

Distributions come from scipy.stats, not from hand-written formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: The largest n for which the exact sign-flip test enumerates its 2^n patterns.
EXACT_MAX_N = 10


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float | None
    std: float | None  # sample standard deviation; None when n < 2
    low: float | None  # 95% t interval of the mean; None when n < 2
    high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.high is None else (self.high - self.low) / 2


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The `level` confidence interval of the mean of `values` (Student's t), or None for n < 2."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return None
    mean, sem = float(x.mean()), float(x.std(ddof=1)) / math.sqrt(len(x))
    if sem == 0.0:
        return mean, mean
    low, high = stats.t.interval(level, len(x) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
    """n, mean, sample std and t interval of `values` (empty: all None)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return Summary(0, None, None, None, None)
    interval = t_interval(x, level)
    std = float(x.std(ddof=1)) if len(x) > 1 else None
    return Summary(len(x), float(x.mean()), std, *(interval or (None, None)))


def sign_flip_p(differences: Sequence[float]) -> float | None:
    """Two-sided exact sign-flip permutation p-value of mean(differences) = 0, enumerating
    all 2^n sign patterns (n <= EXACT_MAX_N; None beyond, or for n = 0)."""
    d = np.asarray(differences, dtype=np.float64)
    n = len(d)
    if n == 0 or n > EXACT_MAX_N:
        return None
    patterns = np.arange(2 ** n)[:, None] >> np.arange(n)[None, :] & 1
    means = np.abs(((1 - 2 * patterns) * d).mean(axis=1))
    observed = abs(float(d.mean()))
    tolerance = 1e-12 * max(1.0, float(np.abs(d).max()))  # equal means reached by another order of sums
    return float(np.mean(means >= observed - tolerance))


@dataclass(frozen=True)
class Paired:
    seeds: list[int]
    n: int
    mean: float | None  # mean of row - baseline over the shared seeds
    std: float | None  # sample std of the differences
    low: float | None  # 95% t interval of the mean difference
    high: float | None
    p_t: float | None  # paired t-test, two-sided
    p_sign_flip: float | None  # exact sign-flip test, two-sided (n <= 10)

    def significant(self, alpha: float) -> bool:
        """The paired t-test's verdict at level `alpha` (False when it cannot be computed)."""
        return self.p_t is not None and self.p_t < alpha


def compare_paired(baseline: dict[int, float], row: dict[int, float], level: float = 0.95) -> Paired:
    """`row` - `baseline` over the seeds both have (seed -> value)."""
    from scipy import stats

    seeds = sorted(set(baseline) & set(row), key=lambda s: (s is None, s))
    d = np.array([row[s] - baseline[s] for s in seeds], dtype=np.float64)
    s = summarize(d, level)
    p_t = None
    if len(d) >= 2:
        if s.std <= 1e-12 * max(1.0, float(np.abs(d).max())):  # every seed moved alike: t is 0/0 or infinite
            p_t = 1.0 if s.mean == 0.0 else 0.0
        else:
            p_t = float(stats.ttest_rel([row[k] for k in seeds], [baseline[k] for k in seeds]).pvalue)
    return Paired(seeds, len(d), s.mean, s.std, s.low, s.high, p_t, sign_flip_p(d) if len(d) >= 1 else None)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values, in the order given; None (no test) stays None and does not
    count in m, the number of tests."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(tested)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def seeds_needed(std_difference: float, effect: float, alpha: float = 0.05, power: float = 0.8,
                 limit: int = 1000) -> int | None:
    """Smallest number of paired seeds for which a two-sided paired t-test at `alpha`
    detects a true mean difference `effect` with probability >= `power`, when the paired
    differences have standard deviation `std_difference`; None if more than `limit`."""
    from scipy import stats

    if effect == 0:
        return None
    if std_difference <= 0:
        return 2
    for n in range(2, limit + 1):
        df = n - 1
        crit = stats.t.ppf(1 - alpha / 2, df)
        nc = abs(effect) / (std_difference / math.sqrt(n))
        # lower tail as P(T > crit; -nc): nct.cdf(-crit, df, nc) is NaN far in the tail (scipy 1.17)
        achieved = stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc)
        if achieved >= power:
            return n
    return None
