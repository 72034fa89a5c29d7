"""The documented rules of the `edps` sampler (README "Small categories"): small
categories, a single category, epoch length, and configuration errors."""

import warnings
from collections import Counter

import numpy as np
import pytest

from reid_edps.sampler import EDPSSampler


def all_episodes(sampler, epochs=10):
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        yield from sampler


def test_categories_with_too_few_identities_are_pooled_and_listed_in_a_warning(make_ctx):
    sizes = {"person": [5] * 20, "vehicle": [5] * 20, "animal": [5] * 20, "ship": [4, 4], "building": [6, 6, 6]}
    with pytest.warns(UserWarning, match="pooled.*building, ship|pooled.*ship, building"):
        sampler = EDPSSampler(make_ctx(sizes), batch_size=64, k=4, categories_per_batch=4)
    assert sampler.categories_per_batch == 4
    assert any("pool(" in name for name in sampler.units.names)
    ctx = make_ctx(sizes)
    drawn = Counter(ctx.train.category_names[c] for e in all_episodes(sampler) for c in ctx.train.category_ids[e.indices])
    assert drawn["ship"] > 0 and drawn["building"] > 0


def test_small_categories_too_small_even_together_are_skipped_with_a_warning(make_ctx):
    sizes = {"person": [5] * 20, "vehicle": [5] * 20, "ship": [4]}
    with pytest.warns(UserWarning, match="ship.*never sampled"):
        sampler = EDPSSampler(make_ctx(sizes), batch_size=32, k=4)
    ctx = make_ctx(sizes)
    assert all("ship" not in {ctx.train.category_names[c] for c in ctx.train.category_ids[e.indices]}
               for e in all_episodes(sampler))


def test_single_category_degrades_to_an_identity_split_with_a_warning(make_ctx):
    ctx = make_ctx({"person": [4] * 30})
    with pytest.warns(UserWarning, match="one category only.*identity-balanced"):
        sampler = EDPSSampler(ctx, batch_size=32, k=4, disjoint_p=1.0)
    for episode in all_episodes(sampler):
        roles = np.asarray(episode.roles)
        pids = ctx.train.pids[episode.indices]
        assert (roles == 0).sum() == (roles == 1).sum() == 16
        assert not set(pids[roles == 0].tolist()) & set(pids[roles == 1].tolist())


def test_many_small_categories_never_crash_mid_epoch(make_ctx):
    """Categories of 1..7 identities with 1..5 images: every epoch plans full episodes."""
    sizes = {f"c{i}": [1 + (i + j) % 5 for j in range(1 + i % 7)] for i in range(12)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler = EDPSSampler(make_ctx(sizes), batch_size=32, k=4)
    for episode in all_episodes(sampler, epochs=30):
        assert len(episode.indices) == 32


def test_too_small_table_is_an_error_at_build(make_ctx):
    with pytest.raises(ValueError, match="lower batch_size or k"):
        EDPSSampler(make_ctx({"person": [4] * 5}), batch_size=64, k=4)


def test_epoch_length_defaults_to_identities_over_p_and_can_be_set(world_ctx):
    assert len(EDPSSampler(world_ctx, batch_size=64, k=4)) == 80 // 16
    sampler = EDPSSampler(world_ctx, batch_size=64, k=4, batches_per_epoch=12)
    assert len(sampler) == len(list(sampler)) == 12


def test_categories_per_batch_draws_a_subset_of_categories(world_ctx):
    t = world_ctx.train
    sampler = EDPSSampler(world_ctx, batch_size=32, k=4, categories_per_batch=2)
    counts = Counter()
    for episode in all_episodes(sampler):
        drawn = set(t.category_ids[episode.indices].tolist())
        assert len(drawn) == 2
        counts.update(drawn)
    assert set(counts) == {0, 1, 2, 3}


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 36}, "batch_size must be a multiple of 2 \\* k = 8"),
    ({"batch_size": 8}, "at least 4 \\* k = 16"),
    ({"k": 0}, "k must be a positive integer"),
    ({"disjoint_p": 1.5}, "disjoint_p must be a probability in \\[0, 1\\]"),
    ({"categories_per_batch": 5}, "categories_per_batch = 5 is not possible here; valid values: 1, 2, 3, 4"),
    ({"batch_size": 16, "categories_per_batch": 3}, "valid values: 1, 2"),
    ({"batches_per_epoch": 0}, "batches_per_epoch must be a positive integer"),
    ({"seed": -1}, "seed must be a non-negative integer"),
])
def test_invalid_keys_are_errors_that_name_the_key_and_valid_values(world_ctx, kwargs, message):
    with pytest.raises(ValueError, match=message):
        EDPSSampler(world_ctx, **kwargs)


def test_edps_is_registered_through_the_entry_point():
    from core.registry import build_registry

    entry = build_registry().get("sampler", "edps")
    assert entry.provider == "edps" and entry.load() is EDPSSampler
