"""Specification of the built-in samplers `pk` and `random` (core/samplers/identity.py)."""

from collections import Counter

import pytest

from core.context import BuildContext
from core.data.table import RecordTable
from core.records import Record
from core.samplers.identity import PKSampler, RandomSampler


def make_ctx(images_per_identity, rank=0, world_size=1, seed=0):
    records = [Record(path=None, pid=100 + pid, camid=i % 3)
               for pid, n in enumerate(images_per_identity) for i in range(n)]
    table = RecordTable.build([("src", records)], relabel=True)
    return BuildContext.from_table(table, rank=rank, world_size=world_size, seed=seed)


# 12 identities with 3..14 images: G = sum(max(n // 4, 1)) groups for k = 4.
SIZES = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
GROUPS = sum(max(n // 4, 1) for n in SIZES)  # 1+1+1+1+1+2+2+2+2+3+3+3 = 22


def batches(sampler, epoch=0):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_pk_batch_holds_p_distinct_identities_with_k_images_each():
    ctx = make_ctx(SIZES)
    for batch in batches(PKSampler(ctx, batch_size=16, k=4)):
        counts = Counter(ctx.train.pids[batch].tolist())
        assert len(batch) == 16
        assert len(counts) == 4 and set(counts.values()) == {4}


def test_pk_group_of_identity_with_k_images_is_distinct_images():
    ctx = make_ctx(SIZES)
    for batch in batches(PKSampler(ctx, batch_size=16, k=4)):
        for start in range(0, 16, 4):
            group = batch[start:start + 4]
            if len(ctx.train.pids[ctx.train.pids == ctx.train.pids[group[0]]]) >= 4:
                assert len(set(group)) == 4


def test_pk_identity_with_fewer_than_k_images_is_topped_up_with_its_own_images():
    ctx = make_ctx([2, 8, 8, 8])  # identity 0 has 2 images; K = 4
    seen = [i for ep in range(5) for b in batches(PKSampler(ctx, batch_size=8, k=4), ep) for i in b
            if ctx.train.pids[i] == 0]
    assert seen and set(seen) == {0, 1}  # only its own two images, both used
    assert len(seen) % 4 == 0


def test_pk_len_is_floor_of_groups_over_p_with_drop_last():
    sampler = PKSampler(make_ctx(SIZES), batch_size=16, k=4)
    assert len(sampler) == GROUPS // 4 == 5
    assert all(len(batches(sampler, ep)) == 5 for ep in range(3))


def test_pk_len_is_ceil_of_groups_over_p_without_drop_last():
    sampler = PKSampler(make_ctx(SIZES), batch_size=16, k=4, drop_last=False)
    assert len(sampler) == 6 == len(batches(sampler))
    assert all(len(b) == 16 for b in batches(sampler))  # the last batch is completed


def test_pk_identity_appears_once_per_group_of_k_images():
    ctx = make_ctx([8] * 8)  # 2 groups each: 16 groups, P = 4 -> 4 batches use every group
    group_identities = [int(ctx.train.pids[b[start]]) for b in batches(PKSampler(ctx, 16, 4))
                        for start in range(0, 16, 4)]
    assert Counter(group_identities) == {pid: 2 for pid in range(8)}


def test_pk_plan_is_deterministic_per_seed_and_epoch():
    ctx = make_ctx(SIZES)
    assert batches(PKSampler(ctx, 16, 4, seed=3), 2) == batches(PKSampler(ctx, 16, 4, seed=3), 2)


def test_pk_plan_differs_between_epochs_and_seeds():
    ctx = make_ctx(SIZES)
    sampler = PKSampler(ctx, 16, 4, seed=3)
    assert batches(sampler, 0) != batches(sampler, 1)
    assert batches(sampler, 0) != batches(PKSampler(ctx, 16, 4, seed=4), 0)


def test_pk_seed_none_uses_the_context_seed():
    assert batches(PKSampler(make_ctx(SIZES, seed=7), 16, 4)) == \
        batches(PKSampler(make_ctx(SIZES), 16, 4, seed=7))


def test_pk_ddp_ranks_split_each_global_batch_by_whole_identities():
    """batch_size is the global batch: rank r gets identity groups r, r + W, ... of every
    batch of the one-process plan, so N processes see exactly the one-process batches."""
    sizes = [8] * 12
    single = batches(PKSampler(make_ctx(sizes), 16, 4))
    shards = [batches(PKSampler(make_ctx(sizes, rank=r, world_size=2), 16, 4)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(single) == len(PKSampler(make_ctx(sizes, 1, 2), 16, 4))
    for step, batch in enumerate(single):
        groups = [batch[i:i + 4] for i in range(0, 16, 4)]
        assert shards[0][step] == groups[0] + groups[2]
        assert shards[1][step] == groups[1] + groups[3]


def test_pk_ddp_needs_identities_divisible_by_world_size():
    with pytest.raises(ValueError, match="cannot be split evenly over 3 processes.*multiple of k \\* world_size = 12"):
        PKSampler(make_ctx(SIZES, rank=0, world_size=3), 16, 4)


def test_pk_batch_size_not_multiple_of_k_names_both_keys():
    with pytest.raises(ValueError, match=r"batch_size \(10\).*k \(4\)"):
        PKSampler(make_ctx(SIZES), batch_size=10, k=4)


def test_pk_too_few_identities_is_an_error():
    with pytest.raises(ValueError, match="3 identities.*P = batch_size // k = 4"):
        PKSampler(make_ctx([4, 4, 4]), batch_size=16, k=4)


def test_random_sampler_covers_every_record_once_per_epoch():
    ctx = make_ctx(SIZES)
    plan = batches(RandomSampler(ctx, batch_size=16))
    assert len(plan) == len(RandomSampler(ctx, batch_size=16)) == -(-len(ctx.train) // 16)
    assert sorted(i for b in plan for i in b) == list(range(len(ctx.train)))


def test_random_sampler_drop_last_drops_the_partial_batch():
    ctx = make_ctx(SIZES)  # 102 records
    plan = batches(RandomSampler(ctx, batch_size=16, drop_last=True))
    assert len(plan) == 6 and all(len(b) == 16 for b in plan)


def test_random_sampler_is_deterministic_and_differs_between_epochs():
    ctx = make_ctx(SIZES)
    assert batches(RandomSampler(ctx, 16), 1) == batches(RandomSampler(ctx, 16), 1)
    assert batches(RandomSampler(ctx, 16), 0) != batches(RandomSampler(ctx, 16), 1)


def test_random_sampler_ddp_ranks_interleave_each_global_batch():
    ctx = make_ctx(SIZES)  # 102 records, batch 17 -> 6 batches (the last of 17)
    single = batches(RandomSampler(ctx, 17))
    shards = [batches(RandomSampler(make_ctx(SIZES, rank=r, world_size=2), 17)) for r in range(2)]
    assert shards[0] == [b[0::2] for b in single] and shards[1] == [b[1::2] for b in single]


def test_random_sampler_ddp_drops_a_last_batch_too_small_for_every_rank():
    ctx = make_ctx(SIZES)  # 102 records, batch 20 -> 5 full batches and one of 2
    shards = [batches(RandomSampler(make_ctx(SIZES, rank=r, world_size=3), 20)) for r in range(3)]
    assert [len(s) for s in shards] == [5, 5, 5] == [len(RandomSampler(make_ctx(SIZES, r, 3), 20)) for r in range(3)]
    assert len(batches(RandomSampler(ctx, 20))) == 6


def test_episodes_shard_by_blocks_and_keep_their_roles():
    from core.interfaces import Episode
    from core.samplers.sharding import shard_batch

    episode = Episode(indices=[0, 1, 2, 3, 4, 5, 6, 7], roles=[0, 0, 0, 0, 1, 1, 1, 1])
    assert shard_batch(episode, 0, 2, unit=2) == Episode([0, 1, 4, 5], [0, 0, 1, 1])
    assert shard_batch(episode, 1, 2, unit=2) == Episode([2, 3, 6, 7], [0, 0, 1, 1])
    assert shard_batch([0, 1], 1, 3) is None  # too small for every rank: skipped by all
