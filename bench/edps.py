"""Benchmark: the `edps` sampler (plugins/edps) planning one epoch over 1,000,000 records.

Goal (issue 6): plan an epoch in under 2 s. The table is built straight from numpy arrays
(no Record objects): a sampler reads only the table's arrays. Default world: 6 categories,
~150k identities with 3..10 images each (mean ~6.7), batch 64, K = 4.

    python bench/edps.py [--records 1000000] [--categories 6] [--repeats 3]

Prints a markdown table (for BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from core.context import BuildContext
from core.data.table import RecordTable


def table(records: int, categories: int, seed: int = 0) -> RecordTable:
    """`records` records of identities with 3..10 images, categories of unequal size."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 11, size=records // 3)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), records) + 1]
    sizes[-1] -= sizes.sum() - records
    sizes = sizes[sizes > 0]
    pids = np.repeat(np.arange(len(sizes)), sizes)
    share = np.linspace(2.0, 1.0, categories)  # the largest category twice the smallest
    bounds = np.searchsorted(np.cumsum(share / share.sum()) * len(sizes), np.arange(len(sizes)), side="right")
    category_of_identity = np.minimum(bounds, categories - 1)
    zeros = np.zeros(records, dtype=np.int64)
    return RecordTable(records=[], source_ids=zeros, sources=["bench"], pids=pids,
                       camids=pids % 6, category_ids=category_of_identity[pids],
                       category_names=[f"category{i}" for i in range(categories)],
                       domain_ids=zeros, domain_names=["bench"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--categories", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from reid_edps.sampler import EDPSSampler

    t = table(args.records, args.categories)
    ctx = BuildContext(train=t, num_identities=int(t.pids.max()) + 1, category_names=t.category_names)
    rows = []
    for p in (0.0, 0.5, 1.0):
        start = time.perf_counter()
        sampler = EDPSSampler(ctx, batch_size=args.batch_size, k=args.k, disjoint_p=p)
        build = time.perf_counter() - start
        times = []
        for epoch in range(args.repeats):
            sampler.set_epoch(epoch)
            start = time.perf_counter()
            plan = list(sampler)
            times.append(time.perf_counter() - start)
        rows.append((p, build, min(times), float(np.median(times)), len(plan)))
    print(f"edps: {args.records:,} records, {int(t.pids.max()) + 1:,} identities, {args.categories} categories, "
          f"batch {args.batch_size}, K = {args.k}, categories per episode {sampler.categories_per_batch}\n")
    print("| disjoint_p | build (s) | plan epoch, best (s) | plan epoch, median (s) | episodes |")
    print("|---|---|---|---|---|")
    for p, build, best, median, n in rows:
        print(f"| {p} | {build:.3f} | {best:.3f} | {median:.3f} | {n:,} |")


if __name__ == "__main__":
    main()
