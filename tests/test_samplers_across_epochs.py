"""Samplers across epochs, against torchreid's RandomIdentitySampler and the documented
contracts of core.samplers: each epoch regroups and redraws, continued passes are fresh."""

from __future__ import annotations

from collections import Counter

from core.context import BuildContext
from core.data.table import RecordTable
from core.records import Record
from core.samplers.epoch import FixedEpochLength
from core.samplers.identity import PKSampler, RandomSampler


def make_ctx(sizes, seed=0, epoch_batches=None):
    records = [Record(path=None, pid=100 + pid, camid=i % 3) for pid, n in enumerate(sizes) for i in range(n)]
    ctx = BuildContext.from_table(RecordTable.build([("src", records)], relabel=True), seed=seed)
    ctx.epoch_batches = epoch_batches
    return ctx


def epoch_plan(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


# S06: torchreid's RandomIdentitySampler shuffles each identity's images every epoch
# (`random.shuffle(idxs)` before cutting groups of K), so the n mod K images that rest
# one epoch are drawn in others and the groups change between epochs.
def test_pk_regroups_each_identity_every_epoch_so_no_image_rests_forever():
    ctx = make_ctx([6] * 8)  # one group of 4 per identity and epoch; 2 images rest each epoch
    sampler = PKSampler(ctx, batch_size=16, k=4)
    seen = Counter(i for epoch in range(12) for batch in epoch_plan(sampler, epoch) for i in batch)
    assert set(seen) == set(range(len(ctx.train)))  # every image drawn in some epoch
    groups = [{frozenset(b[j:j + 4]) for b in epoch_plan(sampler, e) for j in range(0, 16, 4)} for e in (0, 1)]
    assert groups[0] != groups[1]


# S15: torchreid draws the P identities of each batch at random, so which identities
# share a batch changes from epoch to epoch (the batch-hard negatives of an anchor change).
def test_pk_batch_compositions_change_between_epochs():
    ctx = make_ctx([8] * 16)  # 2 groups each, P = 4: 8 batches per epoch
    sampler = PKSampler(ctx, batch_size=16, k=4)
    pids = ctx.train.pids

    def compositions(epoch):
        return Counter(frozenset(int(pids[b[j]]) for j in range(0, 16, 4)) for b in epoch_plan(sampler, epoch))

    assert compositions(0) != compositions(1)
    partners = {int(pids[b[j]]) for e in range(5) for b in epoch_plan(sampler, e)
                if 0 in {int(pids[b[j]]) for j in range(0, 16, 4)} for j in range(0, 16, 4)} - {0}
    assert len(partners) >= 6  # a fixed partition would give identity 0 only 3 partners


# S12 / S13: FixedEpochLength (core.samplers.epoch) "cuts its plan or continues it with
# further passes" and "the plan still depends only on (seed, epoch)": a new epoch is a new
# shuffle, and a continued epoch does not replay its first pass.
def test_fixed_epoch_length_reshuffles_each_epoch():
    inner = RandomSampler(make_ctx([6] * 17), batch_size=16, drop_last=True)  # 102 records: 6 batches
    wrapped = FixedEpochLength(inner, 4)
    assert epoch_plan(wrapped, 0) != epoch_plan(wrapped, 1)


def test_fixed_epoch_length_continues_with_a_fresh_pass():
    inner = RandomSampler(make_ctx([6] * 17), batch_size=16, drop_last=True)
    plan = epoch_plan(FixedEpochLength(inner, 12), 3)
    assert len(plan) == 12
    assert plan[6:] != plan[:6]  # the second pass is another permutation, not a replay


# S22: RandomSampler with the core's epoch length beyond one pass takes "as many passes
# (permutations) as needed": each pass a fresh shuffle.
def test_random_sampler_passes_beyond_the_first_are_fresh_permutations():
    ctx = make_ctx([6] * 17, epoch_batches=12)  # 12 x 16 = 192 > 102 records: 2 passes
    flat = [i for batch in epoch_plan(RandomSampler(ctx, batch_size=16), 0) for i in batch]
    assert len(flat) == 192 and sorted(flat[:102]) == list(range(102))
    assert flat[102:] != flat[:90]
    assert Counter(flat).most_common(1)[0][1] <= 2  # no record more than once per pass
