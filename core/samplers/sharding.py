"""Splitting a global batch over DDP processes, for every sampler (plugins included).

`batch_size` is the global batch: every rank plans the same global batches (the plan
depends only on seed and epoch) and keeps its share of each, in blocks of `unit`
consecutive samples (a PK batch's K images of one identity stay together, so triplet
mining still finds positives on every rank). Episodes keep each sample's role.
"""

from __future__ import annotations

from core.interfaces import Episode


def shard_batch(batch: list[int] | Episode, rank: int, world_size: int,
                unit: int = 1) -> list[int] | Episode | None:
    """Rank `rank`'s blocks r, r + W, ... of `batch`; None when the batch has fewer blocks
    than processes (all ranks then skip it, so they run the same number of steps)."""
    if world_size == 1:
        return batch
    indices = batch.indices if isinstance(batch, Episode) else list(batch)
    starts = list(range(0, len(indices), unit))
    if len(starts) < world_size:
        return None
    keep = [i for s in starts[rank::world_size] for i in range(s, min(s + unit, len(indices)))]
    if isinstance(batch, Episode):
        return Episode([batch.indices[i] for i in keep], [batch.roles[i] for i in keep])
    return [indices[i] for i in keep]


def shard_plan(plan: list, rank: int, world_size: int, unit: int = 1) -> list:
    """`shard_batch` over a whole epoch's plan."""
    shards = (shard_batch(batch, rank, world_size, unit) for batch in plan)
    return [s for s in shards if s is not None]
