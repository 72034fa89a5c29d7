"""Specification of the `edps` sampler's episodes (MGOR Sec. 3.1): invariants that hold for
every episode, checked over many episodes and epochs."""

from collections import Counter

import numpy as np
import pytest

from reid_edps.sampler import EDPSSampler

EPOCHS = 20


def episodes(sampler, epochs=EPOCHS):
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        yield from sampler


def halves(ctx, episode):
    roles = np.asarray(episode.roles)
    indices = np.asarray(episode.indices)
    return indices[roles == 0], indices[roles == 1]


@pytest.mark.parametrize("disjoint_p", [0.0, 0.5, 1.0])
def test_episode_holds_batch_size_records_in_two_equal_halves(world_ctx, disjoint_p):
    for episode in episodes(EDPSSampler(world_ctx, batch_size=32, k=4, disjoint_p=disjoint_p)):
        train, test = halves(world_ctx, episode)
        assert len(episode.indices) == 32 and len(train) == len(test) == 16
        assert episode.roles == [0] * 16 + [1] * 16


@pytest.mark.parametrize("disjoint_p", [0.0, 0.5, 1.0])
def test_every_identity_has_exactly_k_images_inside_one_half(world_ctx, disjoint_p):
    pids = world_ctx.train.pids
    for episode in episodes(EDPSSampler(world_ctx, batch_size=64, k=4, disjoint_p=disjoint_p)):
        train, test = halves(world_ctx, episode)
        train_ids, test_ids = Counter(pids[train].tolist()), Counter(pids[test].tolist())
        assert set(train_ids.values()) == set(test_ids.values()) == {4}
        assert not set(train_ids) & set(test_ids)


def test_halves_share_no_sample(world_ctx):
    for episode in episodes(EDPSSampler(world_ctx)):
        train, test = halves(world_ctx, episode)
        assert not set(train.tolist()) & set(test.tolist())


@pytest.mark.parametrize("disjoint_p", [0.0, 0.5, 1.0])
def test_every_drawn_category_has_at_least_two_identities(world_ctx, disjoint_p):
    t = world_ctx.train
    for episode in episodes(EDPSSampler(world_ctx, batch_size=32, k=4, disjoint_p=disjoint_p)):
        identities = {int(t.pids[i]): int(t.category_ids[i]) for i in episode.indices}
        per_category = Counter(identities.values())
        assert min(per_category.values()) >= 2, per_category


@pytest.mark.parametrize("disjoint_p", [0.0, 0.5, 1.0])
def test_batch_is_category_balanced(world_ctx, disjoint_p):
    """Four categories all drawn, 16 identities per batch: exactly 4 identities of each."""
    t = world_ctx.train
    sampler = EDPSSampler(world_ctx, batch_size=64, k=4, disjoint_p=disjoint_p, categories_per_batch=4)
    for episode in episodes(sampler):
        assert Counter(t.category_ids[episode.indices].tolist()) == {c: 16 for c in range(4)}


def test_shared_episode_gives_every_category_to_both_halves(world_ctx):
    t = world_ctx.train
    for episode in episodes(EDPSSampler(world_ctx, disjoint_p=0.0, categories_per_batch=4)):
        train, test = halves(world_ctx, episode)
        assert set(t.category_ids[train].tolist()) == set(t.category_ids[test].tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("disjoint_p", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_measured_category_disjoint_rate_is_close_to_disjoint_p(world_ctx, disjoint_p):
    t = world_ctx.train
    flags = []
    for episode in episodes(EDPSSampler(world_ctx, batch_size=32, k=4, disjoint_p=disjoint_p), epochs=400):
        train, test = halves(world_ctx, episode)
        flags.append(not set(t.category_ids[train].tolist()) & set(t.category_ids[test].tolist()))
    rate, n = float(np.mean(flags)), len(flags)
    assert n == 4000
    assert abs(rate - disjoint_p) <= 4 * np.sqrt(disjoint_p * (1 - disjoint_p) / n) + 1e-12, rate


def test_identities_are_drawn_without_replacement_within_a_pass(make_ctx):
    """Equal categories of 20 identities, 4 per category per episode, 5 episodes: one pass,
    so every identity appears exactly once per epoch."""
    ctx = make_ctx({name: [4] * 20 for name in ["a", "b", "c", "d"]})
    sampler = EDPSSampler(ctx, batch_size=64, k=4, categories_per_batch=4)
    assert len(sampler) == 5
    for epoch in range(5):
        sampler.set_epoch(epoch)
        seen = Counter(int(ctx.train.pids[i]) for e in sampler for i in e.indices[::4])
        assert seen == {pid: 1 for pid in range(80)}


def test_identity_with_k_or_more_images_gets_k_distinct_images(world_ctx):
    t = world_ctx.train
    for episode in episodes(EDPSSampler(world_ctx)):
        for start in range(0, 64, 4):
            group = episode.indices[start:start + 4]
            assert len(set(t.pids[group].tolist())) == 1
            if (t.pids == t.pids[group[0]]).sum() >= 4:
                assert len(set(group)) == 4


def test_identity_with_fewer_than_k_images_is_topped_up_with_its_own_images(world_ctx):
    t = world_ctx.train
    groups = 0
    for episode in episodes(EDPSSampler(world_ctx)):
        for start in range(0, 64, 4):
            group = episode.indices[start:start + 4]
            own = np.flatnonzero(t.pids == t.pids[group[0]])
            if len(own) < 4:
                groups += 1
                assert set(group) == set(own.tolist())  # all its images, then repeats of them
    assert groups > 0


def test_plan_is_deterministic_per_seed_and_epoch(world_ctx):
    a, b = EDPSSampler(world_ctx, seed=3), EDPSSampler(world_ctx, seed=3)
    for epoch in (0, 7):
        a.set_epoch(epoch), b.set_epoch(epoch)
        assert list(a) == list(b)


def test_plan_differs_between_epochs_and_seeds(world_ctx):
    a = EDPSSampler(world_ctx, seed=3)
    assert a.plan(0) != a.plan(1)
    assert a.plan(0) != EDPSSampler(world_ctx, seed=4).plan(0)


def test_seed_null_uses_the_runs_seed(make_ctx, world_sizes):
    assert EDPSSampler(make_ctx(world_sizes, seed=5)).plan(2) == EDPSSampler(make_ctx(world_sizes), seed=5).plan(2)
