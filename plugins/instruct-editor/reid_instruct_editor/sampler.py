"""Per-task P x K batches (YAML sampler name `task_pk`): Instruct-ReID++'s multi-task
training draws "32 identities x 4 images per task" and weights each task's loss by
1 / number of tasks (METHODS.md).

Each batch holds one task's records only (the task in record extras "task"), planned by
the core's `pk` sampler on that task's records, so batch-hard mining and the adaptive
triplet compare samples under one kind of instruction. Batches cycle through the tasks
in a fixed order, t_0, t_1, ..., t_{T-1}, t_0, ...; with `trainer.accumulate: T` every
optimisation step then sums exactly one batch of each task divided by T: the paper's
1 / T weighting. In a pipeline an epoch has the core's epoch length (core.samplers.epoch:
as many batches as `pk` makes on the whole table; a multiple of T keeps every step whole),
built directly T x B batches, B the most batches any task has; a task with fewer is
re-planned (a fresh P x K plan) until it has its share.

The plan depends only on (seed, epoch); under DDP each process keeps whole identity
groups of every batch (`shard_plan`, unit K), as the core's `pk` does.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from core.context import BuildContext
from core.data.table import RecordTable
from core.interfaces import Sampler
from core.samplers.identity import PKSampler
from core.samplers.sharding import shard_plan

NAME = "sampler 'task_pk'"


class TaskPKSampler(Sampler):
    """Keys: `batch_size` (per batch = per task: P x K), `k`, `seed` (null: the run's),
    `tasks` (order of the cycle; null: the tasks of the training records in sorted order).
    """

    def __init__(self, ctx: BuildContext, batch_size: int = 64, k: int = 4, seed: int | None = None,
                 tasks: list[str] | None = None) -> None:
        table = ctx.train
        if table is None or len(table) == 0:
            raise ValueError(f"{NAME} needs the training record table (data.train)")
        found = np.asarray([str(r.extras.get("task", "all")) for r in table.records], dtype=object)
        present = sorted(set(found.tolist()))
        if tasks is None:
            tasks = present
        missing = [t for t in tasks if t not in present]
        if missing:
            raise ValueError(f"{NAME}: tasks {missing} have no training record; the training tasks are: "
                             f"{', '.join(present)}")
        self.tasks = list(tasks)
        self.seed = ctx.seed if seed is None else int(seed)
        self.rank, self.world_size, self.k = ctx.rank, ctx.world_size, int(k)
        self.rows: list[np.ndarray] = []
        self.samplers: list[PKSampler] = []
        for i, task in enumerate(self.tasks):
            rows = np.flatnonzero(found == task)
            sub = RecordTable(records=[table.records[j] for j in rows], source_ids=table.source_ids[rows],
                              sources=table.sources, pids=table.pids[rows], camids=table.camids[rows],
                              category_ids=table.category_ids[rows], category_names=table.category_names,
                              domain_ids=table.domain_ids[rows], domain_names=table.domain_names)
            sub_ctx = BuildContext.from_table(sub, seed=self.seed, rank=ctx.rank, world_size=ctx.world_size)
            try:
                sampler = PKSampler(sub_ctx, batch_size=batch_size, k=k, seed=self.seed + 7919 * (i + 1))
            except ValueError as exc:
                raise ValueError(f"{NAME}: task '{task}': {exc}") from None
            self.rows.append(rows)
            self.samplers.append(sampler)
        # the core's epoch length (core.samplers.epoch) in a pipeline, else T x the most any task has
        self.num_batches = ctx.epoch_batches or max(len(s) for s in self.samplers) * len(self.tasks)
        self.per_task = -(-self.num_batches // len(self.tasks))

    def _task_batches(self, i: int, epoch: int) -> list[list[int]]:
        """B global batches of task i (table indices), re-planning as needed."""
        batches: list[list[int]] = []
        round_ = 0
        while len(batches) < self.per_task:
            plan = self.samplers[i].plan(epoch * 1000 + round_)
            batches.extend([self.rows[i][b].tolist() for b in plan])
            round_ += 1
        return batches[: self.per_task]

    def plan(self, epoch: int) -> list[list[int]]:
        """The global batches of `epoch`, tasks interleaved."""
        per_task = [self._task_batches(i, epoch) for i in range(len(self.tasks))]
        cycled = [per_task[t][b] for b in range(self.per_task) for t in range(len(self.tasks))]
        return cycled[: self.num_batches]

    def __iter__(self) -> Iterator[list[int]]:
        yield from shard_plan(self.plan(self.epoch), self.rank, self.world_size, self.k)

    def __len__(self) -> int:
        return self.num_batches
