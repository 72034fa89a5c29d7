"""The vectorised PK plan (issue 24) keeps the contract of the per-batch plan it replaced.

Batches are not the same as before for a seed (the old plan drew each batch's identities
one batch at a time, O(batches x identities); no vectorised plan can replay its random
stream), so these tests pin the distributional contract instead and check that the old
plan, kept here as `reference_plan`, meets the same contract on the same tables: P
distinct identities x K images per batch, K distinct images of an identity per group and
no image twice within an epoch's pass until the identity is exhausted, every identity's
groups drawn once per epoch (but for the G mod P that rest with drop_last), the fixed
number of batches, and a large identity spread over the epoch, not packed at its end.
"""

from collections import Counter

import numpy as np
import pytest

from core.context import BuildContext
from core.data.table import RecordTable
from core.records import Record
from core.samplers.identity import PKSampler
from core.samplers.sharding import shard_plan


def make_ctx(sizes, seed=0, rank=0, world_size=1, epoch_batches=None):
    records = [Record(path=None, pid=7 + pid, camid=i % 3) for pid, n in enumerate(sizes) for i in range(n)]
    order = np.random.default_rng(1).permutation(len(records))  # records not grouped by identity
    table = RecordTable.build([("src", [records[i] for i in order])], relabel=True)
    ctx = BuildContext.from_table(table, rank=rank, world_size=world_size, seed=seed)
    ctx.epoch_batches = epoch_batches
    return ctx


def reference_plan(s: PKSampler, epoch: int) -> list[list[int]]:
    """The plan before issue 24 (core/samplers/identity.py at 9748f9f), verbatim in logic."""
    rng = np.random.default_rng(np.random.SeedSequence([s.seed, epoch]))
    index_of_identity = s.index_of_identity

    def group(identity):
        ix = index_of_identity[identity]
        if len(ix) >= s.k:
            return rng.choice(ix, s.k, replace=False)
        return np.concatenate([rng.permutation(ix), rng.choice(ix, s.k - len(ix), replace=True)])

    groups = []
    for identity, ix in enumerate(index_of_identity):
        if len(ix) >= s.k:
            perm = rng.permutation(ix)
            groups.append([perm[g * s.k:(g + 1) * s.k] for g in range(s.groups_per_identity[identity])])
        else:
            groups.append([group(identity)])
    remaining = s.groups_per_identity.astype(np.float64).copy()
    batches = []
    for _ in range(s.num_global_batches):
        avail = np.flatnonzero(remaining > 0)
        if len(avail) >= s.p:
            keys = np.log(rng.random(len(avail))) / remaining[avail]
            chosen = avail[np.argpartition(-keys, s.p - 1)[: s.p]]
            chosen = chosen[rng.permutation(s.p)]
            extra = np.empty(0, dtype=np.int64)
        else:
            chosen = rng.permutation(avail)
            others = np.setdiff1d(np.arange(len(groups)), chosen)
            extra = rng.choice(others, s.p - len(chosen), replace=False)
        batch = []
        for identity in chosen:
            remaining[identity] -= 1
            batch.extend(groups[identity].pop().tolist())
        for identity in extra:
            batch.extend(group(int(identity)).tolist())
        batches.append(batch)
    return batches


PLANS = {"vectorised": lambda s, e: s.plan(e), "reference": reference_plan}
# 40 identities, 1..23 images: small ones topped up, large ones cut into several groups
SIZES = [1 + (7 * i) % 23 for i in range(40)]
# one identity with 40 groups among 30 small ones: batches must not repeat it
SKEWED = [160] + [4] * 30


def identity_of(ctx):
    return np.asarray(ctx.train.pids)


def check_contract(plan, s, pids):
    counts = np.bincount(pids)
    groups = np.maximum(counts // s.k, 1)
    assert len(plan) == s.num_global_batches
    seen = Counter()
    used = {}
    for batch in plan:
        assert len(batch) == s.p * s.k
        ids = [int(pids[batch[i]]) for i in range(0, len(batch), s.k)]
        assert len(set(ids)) == s.p, "an identity twice in one batch"
        for j in range(0, len(batch), s.k):
            grp = batch[j:j + s.k]
            i = int(pids[grp[0]])
            assert (pids[grp] == i).all(), "a group mixes identities"
            if counts[i] >= s.k:
                assert len(set(grp)) == s.k
                used.setdefault(i, []).extend(grp)
            else:
                assert set(grp) == set(np.flatnonzero(pids == i).tolist()), "a small identity's group lacks an image"
            seen[i] += 1
    return seen, groups, used


@pytest.mark.parametrize("which", sorted(PLANS))
def test_pk_plan_contract_one_pass(which):
    ctx = make_ctx(SIZES)
    s = PKSampler(ctx, 16, 4)
    pids = identity_of(ctx)
    plan = PLANS[which](s, 3)
    seen, groups, used = check_contract(plan, s, pids)
    total = int(groups.sum())
    # every identity's groups once, but for the G mod P that rest this epoch
    assert all(seen[i] <= groups[i] for i in range(len(groups)))
    assert sum(groups[i] - seen[i] for i in range(len(groups))) == total - s.num_global_batches * s.p
    # without replacement within the epoch: an identity's images are distinct across its groups
    assert all(len(v) == len(set(v)) for v in used.values())


@pytest.mark.parametrize("which", sorted(PLANS))
def test_pk_plan_contract_skewed_identities(which):
    """One identity holds 40 of 70 groups (17 batches of P = 4): the plan never repeats it
    in a batch, yet draws it in nearly every batch (in proportion to what remains)."""
    ctx = make_ctx(SKEWED)
    s = PKSampler(ctx, 16, 4)
    pids = identity_of(ctx)
    big = int(pids[np.argmax(np.bincount(pids)[pids])])
    for epoch in range(4):
        plan = PLANS[which](s, epoch)
        seen, groups, used = check_contract(plan, s, pids)
        assert seen[big] >= 0.8 * len(plan)


@pytest.mark.parametrize("which", sorted(PLANS))
def test_pk_plan_contract_when_the_epoch_outruns_the_groups(which):
    """epoch_batches beyond floor(G / P): the extra batches take fresh groups, still P
    distinct identities each."""
    ctx = make_ctx(SIZES, epoch_batches=30)
    s = PKSampler(ctx, 16, 4)
    plan = PLANS[which](s, 0)
    seen, groups, _ = check_contract(plan, s, identity_of(ctx))
    assert sum(seen.values()) == 30 * s.p


def test_pk_large_identity_is_spread_over_the_epoch_like_the_reference():
    """Identities drain evenly: an identity with many groups appears in both halves of the
    epoch about equally, as under the reference's draw weighted by remaining groups."""
    sizes = [64] * 4 + [8] * 60
    ctx = make_ctx(sizes)
    s = PKSampler(ctx, 16, 4)
    pids = identity_of(ctx)
    large = set(np.flatnonzero(np.bincount(pids) == 64).tolist())
    for which, plan_of in PLANS.items():
        first = second = 0
        for epoch in range(5):
            plan = plan_of(s, epoch)
            half = len(plan) // 2
            for b, batch in enumerate(plan):
                n = sum(int(pids[batch[i]]) in large for i in range(0, len(batch), s.k))
                if b < half:
                    first += n
                else:
                    second += n
        assert abs(first - second) <= 0.2 * (first + second), (which, first, second)


def test_pk_groups_change_between_epochs_and_cover_each_identity_images():
    ctx = make_ctx([12] * 20)
    s = PKSampler(ctx, 16, 4)
    pids = identity_of(ctx)
    a, b = s.plan(0), s.plan(1)
    assert a != b
    for plan in (a, b):
        images = [i for batch in plan for i in batch]
        assert len(images) == len(set(images))  # 12 images, 3 groups: every image once
        assert sorted(Counter(int(pids[i]) for i in images).values()) == [12] * 20 or len(images) < 240


@pytest.mark.parametrize("world_size", [2, 4])
def test_pk_rank_shards_are_the_shard_plan_of_the_global_plan(world_size):
    ctx = make_ctx(SIZES)
    full = PKSampler(ctx, 16, 4).plan(2)
    for rank in range(world_size):
        s = PKSampler(make_ctx(SIZES, rank=rank, world_size=world_size), 16, 4)
        s.set_epoch(2)
        assert list(s) == shard_plan(full, rank, world_size, 4)


def test_pk_plan_reads_only_columns():
    """A columnar table without Record objects plans the same batches as the record table."""
    ctx = make_ctx(SIZES)
    t = ctx.train
    bare = RecordTable(records=[], source_ids=np.asarray(t.source_ids), sources=list(t.sources),
                       pids=np.asarray(t.pids), camids=np.asarray(t.camids), category_ids=np.asarray(t.category_ids),
                       category_names=list(t.category_names), domain_ids=np.asarray(t.domain_ids),
                       domain_names=list(t.domain_names))
    columnar = BuildContext(train=bare, num_identities=ctx.num_identities, category_names=ctx.category_names, seed=0)
    assert PKSampler(columnar, 16, 4).plan(1) == PKSampler(ctx, 16, 4).plan(1)


def test_stable_order_is_numpy_stable_argsort():
    from core.samplers.identity import stable_order

    rng = np.random.default_rng(0)
    for labels in (rng.integers(0, 70_000, 5000), rng.integers(0, 5, 300), np.array([2**32 + 1, 3, 3]),
                   np.array([-1, 4, -1, 0]), np.zeros(0, dtype=np.int64)):
        assert np.array_equal(stable_order(labels), np.argsort(labels, kind="stable"))
