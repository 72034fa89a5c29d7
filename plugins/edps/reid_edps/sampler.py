"""The EDPS sampler (YAML name `edps`): MGOR Sec. 3.1, "Episodic Distribution Perturbation
Sampling" (Object-Generalized Re-Identification, CVPR 2026).

Each batch is an episode: (1) draw a subset S_b of the categories; (2) draw identities
of each drawn category (at least two per category), K images each, category-balanced;
(3) split the batch into a meta-train and a meta-test half of equal size, never splitting
an identity's K images, with disjoint category sets with probability `disjoint_p` and
shared categories in randomly split proportions otherwise (composition.py). Episodes
reach the losses as `batch.roles` (0 meta-train, 1 meta-test; core.records), so any loss
can read them (MGOR's MOIL: the `moil` plugin).
"""

from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np

from core.context import BuildContext
from core.interfaces import Episode, Sampler
from core.records import ROLE_META_TEST, ROLE_TRAIN
from core.samplers.sharding import shard_plan
from reid_edps import composition
from reid_edps.draws import draw_images, fill_identities
from reid_edps.units import NAME, plan_units


class EDPSSampler(Sampler):
    """Episodes of `batch_size` records (the global batch under DDP): P = batch_size / k
    identities with k images each, P / 2 identities per half.

    Every episode's layout is [meta-train groups, meta-test groups], each group the k
    images of one identity, groups of one category next to each other. An epoch has
    the core's epoch length in a pipeline (`ctx.epoch_batches`: as many as the PK sampler
    makes on the table, core.samplers.epoch); built directly, `batches_per_epoch`
    episodes, by default (identities that can be sampled) // P, so on
    average every identity is drawn about once. Identities are drawn without replacement
    within a pass over their category (small categories start a new pass sooner, since
    the batches are category-balanced). The plan depends only on (seed, epoch); under
    DDP each rank keeps every world_size-th group of each half (`shard_plan` with
    unit = k), so an identity's images stay on one rank and every rank gets
    P / (2 world_size) groups of each half.
    """

    def __init__(self, ctx: BuildContext, batch_size: int = 64, k: int = 4, disjoint_p: float = 0.5,
                 categories_per_batch: int | None = None, batches_per_epoch: int | None = None,
                 seed: int | None = None) -> None:
        self.batch_size, self.k, self.disjoint_p = _check_sizes(batch_size, k, disjoint_p)
        self.p = batch_size // k
        self.half = self.p // 2
        self.seed = _check_seed(seed, ctx)
        self.rank, self.world_size = _check_rank(ctx, self.half)
        table = ctx.train
        if table is None or len(table.pids) == 0:
            raise ValueError(f"{NAME} needs a non-empty training record table (data.train); the build context has none")
        pids = np.asarray(table.pids, dtype=np.int64)
        self.by_identity = np.argsort(pids, kind="stable")
        counts = np.bincount(pids)
        self.counts = counts
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        identity_category = np.full(len(counts), -1, dtype=np.int64)
        identity_category[pids] = np.asarray(table.category_ids, dtype=np.int64)
        self.units = plan_units(identity_category, list(table.category_names), self.half, self.disjoint_p,
                                categories_per_batch)
        self._warn()
        usable = sum(len(ids) for ids in self.units.identities)
        if batches_per_epoch is not None and (not isinstance(batches_per_epoch, int) or batches_per_epoch < 1):
            raise ValueError(f"{NAME}: batches_per_epoch must be a positive integer or null "
                             f"(null: identities // (batch_size // k)), got {batches_per_epoch!r}")
        # the core's epoch length (core.samplers.epoch: as many batches as the PK sampler makes
        # on this table, or the sampler key `epoch_batches`) wins, so sampler rows of an
        # ablation train the same number of steps; batches_per_epoch serves direct use
        self.num_batches = ctx.epoch_batches or batches_per_epoch or max(usable // self.p, 1)
        if batches_per_epoch is not None and ctx.epoch_batches and batches_per_epoch != ctx.epoch_batches:
            warnings.warn(f"{NAME}: batches_per_epoch={batches_per_epoch} is ignored in a pipeline: every sampler "
                          f"plans the core's epoch length, here {ctx.epoch_batches} batches; set the sampler key "
                          "epoch_batches to change it for any sampler", stacklevel=3)

    def _warn(self) -> None:
        u = self.units
        if u.pooled:
            warnings.warn(f"{NAME}: categories with fewer than {u.q_max} identities (the most one episode takes "
                          f"from a category) are pooled into one unit drawn like a category: "
                          f"{', '.join(u.pooled)}", stacklevel=3)
        if u.skipped:
            warnings.warn(f"{NAME}: the small categories {', '.join(u.skipped)} have fewer than {u.q_max} "
                          "identities even together; their identities are never sampled", stacklevel=3)
        if len(u.names) == 1:
            warnings.warn(f"{NAME}: one category only ('{u.names[0]}'): episodes split identities, not "
                          "categories, into meta-train and meta-test halves (an identity-balanced split); "
                          "disjoint_p has no effect", stacklevel=3)

    @property
    def categories_per_batch(self) -> int:
        """|S_b|: categories (planning units) drawn per episode."""
        return self.units.c

    def plan(self, epoch: int) -> list[Episode]:
        """The global (all-rank) episodes of `epoch`."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
        units, quotas, _ = composition.draw(rng, self.num_batches, len(self.units.names), self.units.c,
                                            self.half, self.disjoint_p)
        unit_of_group = np.repeat(units.ravel(), quotas.ravel())
        identities = fill_identities(rng, unit_of_group, self.p, self.units.identities)
        records = draw_images(rng, identities, self.starts, self.counts, self.by_identity, self.k)
        rows = records.reshape(self.num_batches, self.p * self.k).tolist()
        half = self.half * self.k
        return [Episode(row, [ROLE_TRAIN] * half + [ROLE_META_TEST] * half) for row in rows]

    def __iter__(self) -> Iterator[Episode]:
        yield from shard_plan(self.plan(self.epoch), self.rank, self.world_size, self.k)

    def __len__(self) -> int:
        return self.num_batches


def _check_sizes(batch_size: int, k: int, disjoint_p: float) -> tuple[int, int, float]:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"{NAME}: k must be a positive integer (images per identity), got {k!r}")
    if not isinstance(batch_size, int) or batch_size < 4 * k or batch_size % (2 * k):
        raise ValueError(f"{NAME}: batch_size must be a multiple of 2 * k = {2 * k} and at least 4 * k = {4 * k} "
                         f"(two halves of equal size, >= 2 identities of k images each), got {batch_size!r}")
    if isinstance(disjoint_p, bool) or not isinstance(disjoint_p, (int, float)) or not 0.0 <= disjoint_p <= 1.0:
        raise ValueError(f"{NAME}: disjoint_p must be a probability in [0, 1], got {disjoint_p!r}")
    return batch_size, k, float(disjoint_p)


def _check_seed(seed: int | None, ctx: BuildContext) -> int:
    seed = ctx.seed if seed is None else seed
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{NAME}: seed must be a non-negative integer or null (null uses the run's seed), got {seed!r}")
    return int(seed)


def _check_rank(ctx: BuildContext, half: int) -> tuple[int, int]:
    if ctx.world_size < 1 or not 0 <= ctx.rank < ctx.world_size:
        raise ValueError(f"{NAME}: rank {ctx.rank} is not in 0..world_size-1 (world_size {ctx.world_size})")
    if half % ctx.world_size:
        raise ValueError(f"{NAME}: each half's {half} identities cannot be split evenly over {ctx.world_size} "
                         f"processes; make batch_size a multiple of 2 * k * world_size (batch_size is the global batch)")
    return ctx.rank, ctx.world_size
