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


def stable_order(labels: np.ndarray) -> np.ndarray:
    """`np.argsort(labels, kind="stable")`; for labels in 0..2^32-1 as two stable passes
    over 16-bit digits (numpy radix-sorts 16-bit keys; ~3x faster than its timsort of
    int64 at 5M labels)."""
    labels = np.asarray(labels)
    if len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= 2**32:
        return np.argsort(labels, kind="stable")
    low = np.argsort((labels & 0xFFFF).astype(np.uint16), kind="stable")
    return low[np.argsort((labels[low] >> 16).astype(np.uint16), kind="stable")]


def _check_seed(name: str, seed: int | None, ctx: BuildContext) -> int:
    seed = ctx.seed if seed is None else seed
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"sampler '{name}': seed must be a non-negative integer or null "
                         f"(null uses the run's seed), got {seed!r}")
    return int(seed)


def _train_table(name: str, ctx: BuildContext):
    if ctx.train is None or len(ctx.train.pids) == 0:
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
    distinct images (a random permutation of its images; its other n mod K images rest
    this epoch); an identity with n < K images gives one group: all its images, topped
    up to K by drawing from them again. Batches take one group from each of P distinct
    identities. The groups are spread evenly over the epoch, so identities drain evenly
    and a large identity does not crowd the last batches: group j of identity i (G_i
    groups) is placed at time (j + U_i) / G_i, U_i ~ U(0, 1) per identity (systematic
    sampling), and the epoch's groups taken in time order, P per batch; the rare batch
    that would hold one identity twice swaps the second group with the nearest later
    group whose identity fits both batches (else it takes a fresh group of an identity
    not in the batch). Every batch is a full P x K batch and the number of batches is
    fixed: floor(G / P) with `drop_last`, ceil(G / P) without, where G is the total
    number of groups; in a pipeline, the core's epoch length `ctx.epoch_batches`
    (core.samplers.epoch; floor(G / P) for K = 4 unless `epoch_batches` is set). Batches
    beyond the groups take the groups of further passes (fresh permutations).

    The plan is vectorised numpy (one sort of the records, one of the groups): an epoch
    over 5M records / 500k identities plans in about a second (bench/sampler_plan.py).
    Issue 24 replaced the earlier per-batch weighted draw (O(batches x identities)),
    so a seed gives other batches than before that change, with the same contract
    (tests/test_samplers_scale.py checks both against it).
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
        #: Record indices sorted by identity (stable), and each identity's slice of it.
        self.order = stable_order(pids)
        sorted_pids = pids[self.order]
        bounds = np.flatnonzero(sorted_pids[1:] != sorted_pids[:-1]) + 1
        self.starts = np.concatenate([[0], bounds]).astype(np.int64)
        self.counts = np.diff(np.concatenate([self.starts, [len(pids)]])).astype(np.int64)
        #: identity (0..num_ids-1, sorted label order) of each position of `order`
        self._identity_at = np.repeat(np.arange(len(self.counts), dtype=np.int64), self.counts)
        num_ids = len(self.counts)
        if self.p % self.world_size:
            raise ValueError(f"sampler 'pk': P = batch_size // k = {self.p} identities per batch cannot be "
                             f"split evenly over {self.world_size} processes; make batch_size a multiple "
                             f"of k * world_size = {self.k * self.world_size} (batch_size is the global batch)")
        if num_ids < self.p:
            raise ValueError(f"sampler 'pk': the training table has {num_ids} identities, fewer than "
                             f"P = batch_size // k = {self.p}; lower batch_size or raise k")
        self.groups_per_identity = np.maximum(self.counts // k, 1)
        total = int(self.groups_per_identity.sum())
        # the core's epoch length (core.samplers.epoch) when built in a pipeline
        self.num_global_batches = ctx.epoch_batches or (total // self.p if drop_last else -(-total // self.p))

    @property
    def index_of_identity(self) -> list[np.ndarray]:
        """Record indices of each identity (identities in sorted label order)."""
        return np.split(self.order, self.starts[1:])

    def _pass(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One pass over the identities: (identity of each group, (G, K) record indices),
        groups in time order (class doc)."""
        k, counts, starts, gpi = self.k, self.counts, self.starts, self.groups_per_identity
        # a random permutation of each identity's images: sort by (identity, random key)
        keys = self._identity_at.astype(np.float64) + rng.random(len(self.order))
        shuffled = self.order[np.argsort(keys, kind="stable")]  # keys nearly sorted: timsort runs
        ident = np.repeat(np.arange(len(counts), dtype=np.int64), gpi)
        first = np.cumsum(gpi) - gpi
        ordinal = np.arange(len(ident), dtype=np.int64) - first[ident]
        col = np.arange(k, dtype=np.int64)[None, :]
        c = counts[ident][:, None]
        topped = (rng.random((len(ident), k)) * c).astype(np.int64)  # draws again from an identity with < K
        pos = starts[ident][:, None] + np.where(c >= k, ordinal[:, None] * k + col, np.where(col < c, col, topped))
        time = (ordinal + rng.random(len(counts))[ident]) / gpi[ident]
        by_time = np.argsort(time, kind="stable")
        return ident[by_time], shuffled[pos[by_time]]

    def _fresh_group(self, rng: np.random.Generator, identity: int) -> np.ndarray:
        """K random images of one identity: distinct when it has K, else all + repeats."""
        ix = self.order[self.starts[identity]:self.starts[identity] + self.counts[identity]]
        if len(ix) >= self.k:
            return rng.choice(ix, self.k, replace=False)
        return np.concatenate([rng.permutation(ix), rng.choice(ix, self.k - len(ix), replace=True)])

    def plan_array(self, epoch: int) -> np.ndarray:
        """The global (all-rank) batches of `epoch`, (batches, batch_size) record indices."""
        rng = _rng(self.seed, epoch)
        need = self.num_global_batches * self.p
        idents, groups = [], []
        while sum(len(i) for i in idents) < need:  # further passes only when the epoch outruns the groups
            ident, group = self._pass(rng)
            idents.append(ident)
            groups.append(group)
        ident = np.concatenate(idents) if len(idents) > 1 else idents[0]
        group = np.concatenate(groups) if len(groups) > 1 else groups[0]
        _separate(ident, group, self.p, need, rng, self._fresh_group)
        b = self.num_global_batches
        within = np.argsort(rng.random((b, self.p)), axis=1)  # identities in random order within a batch
        batches = np.take_along_axis(group[:need].reshape(b, self.p, self.k), within[:, :, None], axis=1)
        return batches.reshape(b, self.p * self.k)

    def plan(self, epoch: int) -> list[list[int]]:
        """The global (all-rank) batches of `epoch`."""
        return self.plan_array(epoch).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.plan_array(self.epoch)
        if self.world_size > 1:  # rank r keeps identity groups r, r + W, ... (= shard_plan with unit k)
            b = len(batches)
            batches = batches.reshape(b, self.p, self.k)[:, self.rank::self.world_size].reshape(b, -1)
        for row in batches:
            yield row.tolist()

    def __len__(self) -> int:
        return self.num_global_batches


def _separate(ident: np.ndarray, group: np.ndarray, p: int, need: int, rng: np.random.Generator,
              fresh) -> None:
    """Make the first `need` slots (batches of `p`) hold distinct identities per batch, in
    place: a repeated identity's group is swapped with the nearest later group (in a later
    batch, or among the unused groups after `need`) whose identity is not in this batch
    and whose batch does not hold the repeated identity; failing that it is replaced by a
    fresh group of an identity not in the batch. Vectorised check; the loop runs over the
    (rare) batches with a repeat only."""
    rows = np.sort(ident[:need].reshape(-1, p), axis=1)
    for b in np.flatnonzero((rows[:, 1:] == rows[:, :-1]).any(1)):
        lo, hi = b * p, (b + 1) * p
        for slot in range(lo, hi):
            here = ident[lo:hi]
            if (here == ident[slot]).sum() < 2 or slot == lo + int(np.argmax(here == ident[slot])):
                continue  # the first occurrence of an identity stays
            repeated = ident[slot]
            for q in range(hi, len(ident)):
                if ident[q] in here:
                    continue
                if q < need:
                    qb = q // p
                    if repeated in ident[qb * p:(qb + 1) * p]:
                        continue
                ident[slot], ident[q] = ident[q], ident[slot]
                group[[slot, q]] = group[[q, slot]]
                break
            else:
                others = np.setdiff1d(np.unique(ident), here)
                if len(others) == 0:  # cannot happen: the table has >= p identities
                    raise RuntimeError("sampler 'pk': no identity left to complete a batch")
                # any identity of the table not in the batch (ident holds all identities)
                ident[slot] = rng.choice(others)
                group[slot] = fresh(rng, int(ident[slot]))


class RandomSampler(Sampler):
    """Plain shuffled batches (YAML name `random`): one permutation of the training
    table per epoch, cut into batches of `batch_size`, sharded by rank like `pk`. For
    losses that need no positives in the batch (cross-entropy alone)."""

    def __init__(self, ctx: BuildContext, batch_size: int = 64, drop_last: bool = False,
                 seed: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"sampler 'random': batch_size must be positive, got {batch_size}")
        self.num_records = len(_train_table("random", ctx).pids)
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
