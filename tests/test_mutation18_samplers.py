"""PK sampler contract on a table that forces its fallback path (mutation review, branch
mutation18): an identity with fewer than K images always comes as ALL its images topped up
with repeats, also when a batch has to take a fresh group of it (`_separate`'s fallback)."""

from __future__ import annotations

from collections import Counter

from core.context import BuildContext
from core.data.table import RecordTable
from core.records import Record
from core.samplers.identity import PKSampler


def test_small_identity_groups_hold_all_its_images_even_when_taken_fresh():
    # Identity A: 16 images (4 groups of K = 4); identity B: 2 images (1 group). P = 2, so
    # every batch needs both identities, but the pass has 4 groups of A and 1 of B: the
    # second batch finds no group of B left to swap in and takes a fresh one. Whichever
    # way a group of B is made it must hold both of B's images (plus two repeats of them).
    records = [Record(path=None, pid=1, camid=0) for _ in range(16)] + \
              [Record(path=None, pid=2, camid=1) for _ in range(2)]
    ctx = BuildContext.from_table(RecordTable.build([("src", records)], relabel=True), seed=0)
    pids = ctx.train.pids
    b_images = {i for i in range(len(pids)) if pids[i] == pids[16]}
    sampler = PKSampler(ctx, batch_size=8, k=4)
    groups_of_b = 0
    for epoch in range(40):
        for batch in sampler.plan(epoch):
            groups = [batch[s:s + 4] for s in range(0, 8, 4)]
            assert sorted(len({pids[i] for i in g}) for g in groups) == [1, 1]  # one identity per group
            assert len({pids[g[0]] for g in groups}) == 2  # P distinct identities
            for g in groups:
                if pids[g[0]] == pids[16]:
                    groups_of_b += 1
                    assert set(g) == b_images and sorted(Counter(g).values()) in ([1, 3], [2, 2])
    assert groups_of_b == 40 * 2  # B in every batch, one of them from the fallback
