"""Batch samplers of the strong baseline: identity-balanced P x K batches and plain
random batches.

Batch-hard triplet mining (Hermans et al. 2017, "In Defense of the Triplet Loss",
Sec. 2) needs every batch to hold P identities with K images each, so that every anchor
has positives and negatives; `PKSampler` plans such batches the way torchreid's
`RandomIdentitySampler` and fast-reid's balanced identity sampler do, but with an exact,
seed-independent `__len__` and a plan that depends only on (seed, epoch, rank,
world_size), so a resumed or distributed run replays it exactly.

Under DDP `batch_size` is the global batch, as in fast-reid: every rank plans the same
global batches and yields its own slice of each (whole identity groups for `pk`), so a
run on N processes sees exactly the batches of a one-process run and its gradients
(averaged by DDP) match those of the one-process run for batch-decomposable losses.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from core.context import BuildContext
from core.interfaces import Sampler
from core.samplers.sharding import shard_plan


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch]))


def _check_seed(name: str, seed: int | None, ctx: BuildContext) -> int:
    seed = ctx.seed if seed is None else seed
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"sampler '{name}': seed must be a non-negative integer or null "
                         f"(null uses the run's seed), got {seed!r}")
    return int(seed)


def _train_table(name: str, ctx: BuildContext):
    if ctx.train is None or len(ctx.train) == 0:
        raise ValueError(f"sampler '{name}' needs a non-empty training record table "
                         "(data.train); the build context has none")
    return ctx.train


def _check_rank(name: str, ctx: BuildContext) -> tuple[int, int]:
    if ctx.world_size < 1 or not 0 <= ctx.rank < ctx.world_size:
        raise ValueError(f"sampler '{name}': rank {ctx.rank} is not in 0..world_size-1 "
                         f"(world_size {ctx.world_size})")
    return ctx.rank, ctx.world_size


class PKSampler(Sampler):
    """P identities x K images per batch (YAML name `pk`), for batch-hard triplet mining
    (Hermans et al. 2017, Sec. 2; Luo et al. 2019 "Bag of Tricks", Sec. 3).

    Per epoch each identity with n >= K images is cut into floor(n/K) groups of K
    distinct images (its other n mod K images rest this epoch); an identity with n < K
    images gives one group: all its images, topped up to K by drawing from them again.
    Batches take one group from each of P distinct identities, drawn at random with
    weight proportional to the identity's remaining groups (so identities drain evenly
    and few groups are left over). When fewer than P identities still have groups, the
    batch is completed with fresh groups of other identities, so every batch is a full
    P x K batch and the number of batches is fixed: floor(G / P) with `drop_last`,
    ceil(G / P) without, where G is the total number of groups; in a pipeline, the core's
    epoch length `ctx.epoch_batches` (core.samplers.epoch; floor(G / P) for K = 4 unless
    `epoch_batches` is set). Batches beyond the groups are made of fresh groups.
    """

    def __init__(self, ctx: BuildContext, batch_size: int = 64, k: int = 4,
                 drop_last: bool = True, seed: int | None = None) -> None:
        if k < 1 or batch_size < 1:
            raise ValueError(f"sampler 'pk': batch_size ({batch_size}) and k ({k}) must be positive")
        if batch_size % k:
            raise ValueError(f"sampler 'pk': batch_size ({batch_size}) must be a multiple of k ({k}); "
                             f"each batch holds batch_size // k identities with k images each")
        table = _train_table("pk", ctx)
        self.batch_size, self.k, self.p = batch_size, k, batch_size // k
        self.drop_last = drop_last
        self.seed = _check_seed("pk", seed, ctx)
        self.rank, self.world_size = _check_rank("pk", ctx)
        pids = np.asarray(table.pids)
        order = np.argsort(pids, kind="stable")
        ids, starts = np.unique(pids[order], return_index=True)
        #: Record indices of each identity (identities in sorted label order).
        self.index_of_identity: list[np.ndarray] = np.split(order, starts[1:])
        if self.p % self.world_size:
            raise ValueError(f"sampler 'pk': P = batch_size // k = {self.p} identities per batch cannot be "
                             f"split evenly over {self.world_size} processes; make batch_size a multiple "
                             f"of k * world_size = {self.k * self.world_size} (batch_size is the global batch)")
        if len(ids) < self.p:
            raise ValueError(f"sampler 'pk': the training table has {len(ids)} identities, fewer than "
                             f"P = batch_size // k = {self.p}; lower batch_size or raise k")
        counts = np.array([len(ix) for ix in self.index_of_identity])
        self.groups_per_identity = np.maximum(counts // k, 1)
        total = int(self.groups_per_identity.sum())
        # the core's epoch length (core.samplers.epoch) when built in a pipeline
        self.num_global_batches = ctx.epoch_batches or (total // self.p if drop_last else -(-total // self.p))

    def _group(self, rng: np.random.Generator, identity: int) -> np.ndarray:
        """K random images of one identity: distinct when it has K, else all + repeats."""
        ix = self.index_of_identity[identity]
        if len(ix) >= self.k:
            return rng.choice(ix, self.k, replace=False)
        return np.concatenate([rng.permutation(ix), rng.choice(ix, self.k - len(ix), replace=True)])

    def plan(self, epoch: int) -> list[list[int]]:
        """The global (all-rank) batches of `epoch`."""
        rng = _rng(self.seed, epoch)
        groups: list[list[np.ndarray]] = []
        for identity, ix in enumerate(self.index_of_identity):
            if len(ix) >= self.k:
                perm = rng.permutation(ix)
                n = self.groups_per_identity[identity]
                groups.append([perm[g * self.k:(g + 1) * self.k] for g in range(n)])
            else:
                groups.append([self._group(rng, identity)])
        remaining = self.groups_per_identity.astype(np.float64).copy()
        num_ids = len(groups)
        batches: list[list[int]] = []
        for _ in range(self.num_global_batches):
            avail = np.flatnonzero(remaining > 0)
            if len(avail) >= self.p:
                # Weighted sampling without replacement (Efraimidis & Spirakis 2006):
                # the P largest keys log(u) / w.
                keys = np.log(rng.random(len(avail))) / remaining[avail]
                chosen = avail[np.argpartition(-keys, self.p - 1)[: self.p]]
                chosen = chosen[rng.permutation(self.p)]
                extra = np.empty(0, dtype=np.int64)
            else:
                chosen = rng.permutation(avail)
                others = np.setdiff1d(np.arange(num_ids), chosen)
                extra = rng.choice(others, self.p - len(chosen), replace=False)
            batch: list[int] = []
            for identity in chosen:
                remaining[identity] -= 1
                batch.extend(groups[identity].pop().tolist())
            for identity in extra:
                batch.extend(self._group(rng, int(identity)).tolist())
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from shard_plan(self.plan(self.epoch), self.rank, self.world_size, self.k)

    def __len__(self) -> int:
        return self.num_global_batches


class RandomSampler(Sampler):
    """Plain shuffled batches (YAML name `random`): one permutation of the training
    table per epoch, cut into batches of `batch_size`, sharded by rank like `pk`. For
    losses that need no positives in the batch (cross-entropy alone)."""

    def __init__(self, ctx: BuildContext, batch_size: int = 64, drop_last: bool = False,
                 seed: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"sampler 'random': batch_size must be positive, got {batch_size}")
        self.num_records = len(_train_table("random", ctx))
        self.batch_size, self.drop_last = batch_size, drop_last
        self.seed = _check_seed("random", seed, ctx)
        self.rank, self.world_size = _check_rank("random", ctx)
        n, b = self.num_records, batch_size
        self.num_global_batches = n // b if drop_last else -(-n // b)
        #: the core's epoch length (core.samplers.epoch) when built in a pipeline: that many
        #: full batches, from as many passes (permutations) as needed
        self.fixed = ctx.epoch_batches
        if self.fixed:
            self.num_global_batches = self.fixed
        if self.num_global_batches == 0:
            raise ValueError(f"sampler 'random': batch_size ({b}) exceeds the {n} training records "
                             "and drop_last is true, so an epoch would have no batch")

    def plan(self, epoch: int) -> list[list[int]]:
        """The global (all-rank) batches of `epoch`."""
        rng = _rng(self.seed, epoch)
        b = self.batch_size
        perm = rng.permutation(self.num_records)
        if self.fixed:
            passes = -(-self.fixed * b // self.num_records)
            perm = np.concatenate([perm, *(rng.permutation(self.num_records) for _ in range(passes - 1))])
        return [perm[i * b:(i + 1) * b].tolist() for i in range(self.num_global_batches)]

    def __iter__(self) -> Iterator[list[int]]:
        yield from shard_plan(self.plan(self.epoch), self.rank, self.world_size, 1)

    def __len__(self) -> int:
        n, b, w = self.num_records, self.batch_size, self.world_size
        last = b if self.fixed else n - (self.num_global_batches - 1) * b  # size of the last global batch
        return self.num_global_batches - (1 if last < w else 0)
