"""One identity classifier per task, as the authors' code trains IRM: each task runs in its
own process group with a model built for its own dataset's identities
(`num_classes=train_set.num_classes`), and the classifiers are left out of the
gradient synchronisation between tasks (`ignore=['classifier', ...]`), so a sample is
classified among its task's identities only.

Ours: the blocks of all tasks are the rows of one bias-free linear layer (task t owns
columns offset_t .. offset_t + N_t - 1, N_t = its training identities); a row's logits
outside its task's block are -inf, and its target is the column of its identity in its
task's block ("id_targets"). Cross-entropy over such logits is exactly the CE of the
task's own classifier; the other blocks receive no gradient from the row.

`shared` (ours, the earlier default): one classifier over every training identity.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.context import BuildContext
from core.records import Batch, device_index

NAME = "head 'instruct_editor'"
#: Task name of records without one (a table that is not an `instruct` dataset).
NO_TASK = "all"


def task_blocks(ctx: BuildContext) -> tuple[list[str], np.ndarray]:
    """(task names, targets (T, num_identities): the column of each identity in each
    task's block, -1 where the task has no such identity) from the training table."""
    table = ctx.train
    n = int(ctx.num_identities)
    if table is None or not len(table):
        return [NO_TASK], np.arange(n, dtype=np.int64)[None]
    tasks = np.asarray([str(r.extras.get("task", NO_TASK)) for r in table.records], dtype=object)
    names = sorted(set(tasks.tolist()))
    targets = np.full((len(names), max(n, int(table.pids.max()) + 1)), -1, dtype=np.int64)
    offset = 0
    for t, name in enumerate(names):
        ids = np.unique(table.pids[tasks == name])
        targets[t, ids] = offset + np.arange(len(ids))
        offset += len(ids)
    return names, targets


class TaskClassifiers(nn.Module):
    """Bias-free classifiers (std 0.001) for `streams`, one block per task (module doc)."""

    def __init__(self, ctx: BuildContext, dim: int, streams: tuple[str, ...], per_task: bool = True) -> None:
        super().__init__()
        if per_task:
            self.tasks, targets = task_blocks(ctx)
        else:
            self.tasks, targets = [NO_TASK], np.arange(int(ctx.num_identities), dtype=np.int64)[None]
        self.per_task = bool(per_task)
        self.index = {name: i for i, name in enumerate(self.tasks)}
        columns = int(targets.max()) + 1
        self.register_buffer("targets", torch.as_tensor(targets), persistent=False)
        self.host_targets = np.asarray(targets, dtype=np.int64)  # the input check's copy
        # the task of each column, from the numpy table (a buffer built on the meta device, as
        # a sweep's check builds, has no values to index with)
        owner = np.full(columns, -1, dtype=np.int64)
        for t in range(len(self.tasks)):
            owner[targets[t][targets[t] >= 0]] = t
        self.register_buffer("owner", torch.as_tensor(owner), persistent=False)
        self.layers = nn.ModuleDict({k: nn.Linear(dim, columns, bias=False) for k in streams})
        for layer in self.layers.values():
            nn.init.normal_(layer.weight, std=0.001)

    def _check_targets(self, batch: Batch, tasks: np.ndarray) -> None:
        """Every row's identity is one of its task's training identities."""
        pids = batch.host("pids")
        table = self.host_targets
        known = (pids >= 0) & (pids < table.shape[1])
        targets = np.where(known, table[tasks, np.where(known, pids, 0)], -1)
        if (targets < 0).any():
            row = int(np.flatnonzero(targets < 0)[0])
            raise ValueError(f"{NAME}: batch row {row} (identity {int(pids[row])}) is not an identity of its "
                             f"task {self.tasks[int(tasks[row])]!r} in the training table")

    def host_row_tasks(self, batch: Batch, n: int) -> np.ndarray:
        """(n,) task index of each row (batch extras "task", a list: no device read)."""
        if not self.per_task or self.tasks == [NO_TASK]:
            return np.zeros(n, dtype=np.int64)
        names = batch.extras.get("task")
        if names is None:
            raise KeyError(f"{NAME}: per-task classifiers need the batch field extras 'task' (the `instruct` dataset "
                           "sets it); or set classifier_per_task: false")
        try:
            return np.asarray([self.index[str(t)] for t in names], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"{NAME}: a batch row has task {exc.args[0]!r}, which no training record has; "
                             f"training tasks: {', '.join(self.tasks)}") from None

    def forward(self, x: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """{"<stream>_logits": (n, columns), "id_targets": (n,)} for features x[stream]."""
        n = len(batch)
        host_tasks = self.host_row_tasks(batch, n)
        # the input check reads the data (compiled, a graph break): eager only; on the host
        # copies of the labels (`Batch.host`), no host sync
        if not torch.compiler.is_compiling():
            self._check_targets(batch, host_tasks)
        tasks = device_index(host_tasks, self.owner.device)
        targets = self.targets[tasks, batch.pids.to(self.targets.device)]
        out = {"id_targets": targets}
        outside = self.owner[None, :] != tasks[:, None] if self.per_task else None
        for stream, layer in self.layers.items():
            logits = layer(x[stream])
            out[f"{stream}_logits"] = logits if outside is None else logits.masked_fill(outside, float("-inf"))
        return out
