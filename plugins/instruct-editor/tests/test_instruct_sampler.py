"""The `task_pk` sampler: P x K batches of one task each, the tasks in a fixed cycle."""

import numpy as np
import pytest

from core.context import BuildContext
from core.data.table import RecordTable
from reid_instruct_editor.dataset import InstructDataset
from reid_instruct_editor.sampler import TaskPKSampler


@pytest.fixture(scope="module")
def table():
    data = InstructDataset(world={"identities": 6, "test_identities": 2, "render_size": [32, 16]},
                           tasks=["traditional", "clothes-template", "text-to-image"])
    return RecordTable.build([("instruct", data.records("train"))], relabel=True)


def test_each_batch_is_one_task_of_p_identities_times_k(table):
    sampler = TaskPKSampler(BuildContext.from_table(table), batch_size=8, k=2,
                            tasks=["traditional", "clothes-template", "text-to-image"])
    plan = sampler.plan(0)
    assert len(plan) == len(sampler) == 3 * sampler.per_task
    tasks = [{table.records[i].extras["task"] for i in batch} for batch in plan]
    assert all(len(t) == 1 for t in tasks)
    assert [t.pop() for t in tasks[:6]] == ["traditional", "clothes-template", "text-to-image"] * 2
    for batch in plan:
        pids = table.pids[batch]
        assert len(batch) == 8 and len(set(pids.tolist())) == 4
        assert all(np.sum(pids == p) == 2 for p in set(pids.tolist()))


def test_the_plan_depends_on_the_epoch_only(table):
    ctx = BuildContext.from_table(table, seed=3)
    a, b = TaskPKSampler(ctx, batch_size=8, k=2), TaskPKSampler(ctx, batch_size=8, k=2)
    assert a.plan(1) == b.plan(1) and a.plan(1) != a.plan(2)


def test_an_unknown_task_is_named(table):
    with pytest.raises(ValueError, match="visible-infrared"):
        TaskPKSampler(BuildContext.from_table(table), batch_size=8, k=2, tasks=["visible-infrared"])
