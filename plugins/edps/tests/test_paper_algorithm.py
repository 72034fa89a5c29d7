"""EDPS as the paper's algorithm states it (MGOR Sec. 3.1), step by step:

1. draw a subset S_b of the category set S;
2. at least two identities per drawn category, K images each: a category-balanced batch B;
3. split B into two non-overlapping halves, |B_train| = |B_test| = |B| / 2, so that every
   episode perturbs the category distribution; with probability `disjoint_p` the halves'
   category sets are disjoint.

Our reading of step 3 for the episodes that are not disjoint (README, "Perturbation
semantics"): every drawn category puts one identity in each half and the rest of B is
split uniformly at random, so the meta-train count of a category is 1 + a hypergeometric
draw; checked here against scipy's hypergeometric distribution.
"""

from collections import Counter

import numpy as np
import pytest
from scipy import stats

from reid_edps.sampler import EDPSSampler

#: The paper's training set has five categories (person, vehicle, ship, panda, tiger).
FIVE = {name: [4 + i % 3 for i in range(30)] for name in ["person", "vehicle", "ship", "panda", "tiger"]}


def episodes(sampler, epochs):
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        yield from sampler


def composition(ctx, episode):
    """(categories of B with their identity counts, meta-train counts, meta-test counts)."""
    t = ctx.train
    roles = np.asarray(episode.roles)
    idx = np.asarray(episode.indices)[::4]  # one record per identity group (k = 4)
    cats = t.category_ids[idx]
    half = roles[::4] == 0
    return Counter(cats.tolist()), Counter(cats[half].tolist()), Counter(cats[~half].tolist())


def test_step1_default_subset_for_the_papers_five_categories_is_four_by_four(make_ctx):
    """Batch 64 = 16 identities x K=4 over 5 categories: |S_b| = 4 (a proper subset, even so
    a disjoint split gives 2 + 2 categories), 4 identities each, S_b changing per episode."""
    ctx = make_ctx(FIVE)
    sampler = EDPSSampler(ctx, batch_size=64, k=4)
    assert sampler.categories_per_batch == 4
    subsets = Counter()
    for episode in episodes(sampler, 20):
        whole, _, _ = composition(ctx, episode)
        assert sorted(whole.values()) == [4, 4, 4, 4]
        subsets[frozenset(whole)] += 1
    assert len(subsets) == 5  # every 4-of-5 subset occurs: S_b is drawn, not fixed


def test_step1_default_subset_with_four_categories_draws_two(world_ctx):
    sampler = EDPSSampler(world_ctx, batch_size=64, k=4)
    assert sampler.categories_per_batch == 2
    for episode in episodes(sampler, 5):
        whole, _, _ = composition(world_ctx, episode)
        assert sorted(whole.values()) == [8, 8]


def test_step1_two_categories_have_no_proper_even_subset_so_both_are_drawn(make_ctx):
    sampler = EDPSSampler(make_ctx({"person": [4] * 20, "vehicle": [4] * 20}), batch_size=32, k=4)
    assert sampler.categories_per_batch == 2


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_step1_subset_size_is_configurable(make_ctx, size):
    ctx = make_ctx(FIVE)
    sampler = EDPSSampler(ctx, batch_size=64, k=4, categories_per_batch=size)
    for episode in episodes(sampler, 3):
        whole, _, _ = composition(ctx, episode)
        assert len(whole) == size and min(whole.values()) >= 2


@pytest.mark.parametrize("disjoint_p", [0.0, 0.5, 1.0])
def test_step2_batch_is_category_balanced_and_step3_halves_are_equal(make_ctx, disjoint_p):
    ctx = make_ctx(FIVE)
    for episode in episodes(EDPSSampler(ctx, batch_size=64, k=4, disjoint_p=disjoint_p), 10):
        whole, train, test = composition(ctx, episode)
        assert set(whole.values()) == {4}
        assert sum(train.values()) == sum(test.values()) == 8


def test_step3_disjoint_episodes_give_each_half_half_of_s_b(make_ctx):
    ctx = make_ctx(FIVE)
    for episode in episodes(EDPSSampler(ctx, batch_size=64, k=4, disjoint_p=1.0), 10):
        _, train, test = composition(ctx, episode)
        assert not set(train) & set(test)
        assert sorted(train.values()) == sorted(test.values()) == [4, 4]


def test_step3_shared_episodes_are_perturbed_too(make_ctx):
    """Not-disjoint episodes keep every drawn category in both halves, but the halves'
    proportions differ from episode to episode (a perturbation in every episode, not a
    fixed even split)."""
    ctx = make_ctx(FIVE)
    shapes = Counter()
    for episode in episodes(EDPSSampler(ctx, batch_size=64, k=4, disjoint_p=0.0), 40):
        whole, train, test = composition(ctx, episode)
        assert set(train) == set(test) == set(whole)
        assert all(train[c] + test[c] == whole[c] for c in whole)
        shapes[tuple(sorted(train.values()))] += 1
    assert len(shapes) >= 3  # e.g. (2, 2, 2, 2), (1, 2, 2, 3), (1, 1, 3, 3)
    assert shapes[(2, 2, 2, 2)] < sum(shapes.values())  # not the even split every time


def test_step3_shared_meta_train_counts_follow_the_stated_random_split(make_ctx):
    """Two categories x 8 identities, halves of 8: each category puts one identity in each
    half, and meta-train takes a uniformly random 6 of the other 12 identity slots, so a
    category's meta-train count is 1 + Hypergeom(M=12, n=6, N=6)."""
    ctx = make_ctx({"person": [4] * 60, "vehicle": [4] * 60})
    sampler = EDPSSampler(ctx, batch_size=64, k=4, disjoint_p=0.0)
    counts = [composition(ctx, e)[1][0] for e in episodes(sampler, 200)]  # person in meta-train
    observed = np.bincount(counts, minlength=8)[1:8]
    expected = stats.hypergeom(12, 6, 6).pmf(np.arange(7)) * len(counts)
    assert observed.sum() == len(counts)  # always 1..7: both halves hold the category
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < stats.chi2(6).ppf(0.999), (observed, expected.round(1))


@pytest.mark.parametrize("disjoint_p", [0.25, 0.75])
def test_step3_disjoint_rate_is_disjoint_p_with_the_default_subset(make_ctx, disjoint_p):
    ctx = make_ctx(FIVE)
    flags = [not set(composition(ctx, e)[1]) & set(composition(ctx, e)[2])
             for e in episodes(EDPSSampler(ctx, batch_size=64, k=4, disjoint_p=disjoint_p), 150)]
    n, rate = len(flags), float(np.mean(flags))
    assert abs(rate - disjoint_p) <= 4 * np.sqrt(disjoint_p * (1 - disjoint_p) / n), rate


def test_default_disjoint_p_is_one_half(world_ctx):
    """METHODS.md, EDPS: 'default p = 0.5'."""
    assert EDPSSampler(world_ctx).disjoint_p == 0.5


def test_odd_subset_gives_meta_train_floor_or_ceil_of_the_categories_with_equal_odds(make_ctx):
    """|S_b| = 3, every episode disjoint: meta-train holds 1 or 2 of the 3 categories, each
    with probability 1/2 (an exact binomial test), never always the same side."""
    ctx = make_ctx(FIVE)
    sampler = EDPSSampler(ctx, batch_size=48, k=4, disjoint_p=1.0, categories_per_batch=3)
    n_train_cats = []
    for e in episodes(sampler, 40):
        cats = ctx.train.category_ids[np.asarray(e.indices)[::4]]
        train = np.asarray(e.roles)[::4] == 0
        assert not set(cats[train]) & set(cats[~train])
        n_train_cats.append(len(set(cats[train].tolist())))
    counts = Counter(n_train_cats)
    assert set(counts) <= {1, 2}
    assert stats.binomtest(counts[2], len(n_train_cats), 0.5).pvalue > 1e-3, counts


def test_images_are_drawn_uniformly_within_an_identity(make_ctx):
    """Reference (METHODS.md: K images, with replacement only below K): an identity with
    6 >= K images gives each of its images with probability K/6; one with 2 < K gives both
    once and tops up with uniform draws. Either way every image rank is equally frequent:
    chi-square against the uniform over ranks."""
    ctx = make_ctx({"a": [6] * 20, "b": [2] * 20})
    pids = np.asarray(ctx.train.pids)
    rank = np.empty(len(pids), dtype=np.int64)  # position of each record among its identity's
    for p in np.unique(pids):
        rank[np.flatnonzero(pids == p)] = np.arange((pids == p).sum())
    sampler = EDPSSampler(ctx, batch_size=32, k=4)
    for size in (6, 2):
        counts = np.zeros(size)
        images = np.bincount(pids)  # images per identity
        for e in episodes(sampler, 60):
            idx = np.asarray(e.indices)
            idx = idx[images[pids[idx]] == size]
            np.add.at(counts, rank[idx], 1)
        chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
        assert chi2 < stats.chi2(size - 1).ppf(0.999), (size, counts)
