"""The `edps` sampler under DDP: every rank plans the same global episodes (batch_size is
the global batch) and keeps whole identity groups of both halves."""

from collections import Counter

import numpy as np
import pytest

from reid_edps.sampler import EDPSSampler


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_shards_are_disjoint_and_their_union_is_the_single_process_episode(make_ctx, world_sizes, world_size):
    single = EDPSSampler(make_ctx(world_sizes), batch_size=64, k=4)
    ranks = [EDPSSampler(make_ctx(world_sizes, rank=r, world_size=world_size), batch_size=64, k=4)
             for r in range(world_size)]
    for epoch in (0, 3):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        whole = list(single)
        shards = [list(s) for s in ranks]
        assert all(len(s) == len(whole) == len(single) for s in shards)
        for step, episode in enumerate(whole):
            parts = [shard[step] for shard in shards]
            merged = Counter((i, r) for p in parts for i, r in zip(p.indices, p.roles))
            assert merged == Counter(zip(episode.indices, episode.roles))
            assert sum(len(p.indices) for p in parts) == 64


@pytest.mark.parametrize("world_size", [2, 4])
def test_every_rank_gets_equal_halves_of_whole_identity_groups(make_ctx, world_sizes, world_size):
    for rank in range(world_size):
        ctx = make_ctx(world_sizes, rank=rank, world_size=world_size)
        for episode in EDPSSampler(ctx, batch_size=64, k=4):
            roles = np.asarray(episode.roles)
            assert (roles == 0).sum() == (roles == 1).sum() == 32 // world_size
            pids = ctx.train.pids[episode.indices]
            assert set(Counter(pids.tolist()).values()) == {4}
            assert not set(pids[roles == 0].tolist()) & set(pids[roles == 1].tolist())


def test_rank_shards_hold_different_records(make_ctx, world_sizes):
    """An episode never repeats an identity, so two ranks' shards share no identity."""
    a = list(EDPSSampler(make_ctx(world_sizes, rank=0, world_size=2)))
    b = list(EDPSSampler(make_ctx(world_sizes, rank=1, world_size=2)))
    ctx = make_ctx(world_sizes)
    for x, y in zip(a, b):
        assert not set(ctx.train.pids[x.indices].tolist()) & set(ctx.train.pids[y.indices].tolist())


def test_halves_that_cannot_split_over_the_processes_are_an_error(make_ctx, world_sizes):
    with pytest.raises(ValueError, match="multiple of 2 \\* k \\* world_size"):
        EDPSSampler(make_ctx(world_sizes, rank=0, world_size=3), batch_size=64, k=4)
