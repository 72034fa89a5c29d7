"""Benchmark: planning one epoch with the `pk` sampler (core/samplers/identity.py) and the
`edps` sampler (plugins/edps) over a table of N records and M identities (issue 24: under
2 s at 5M records / 500k identities).

The table is built straight from numpy arrays (no Record objects): a sampler reads only
the table's columns. Identities get 1 + Poisson(N / M - 1) images (mean N / M), spread
over 6 categories; batch 64, K = 4.

    python bench/sampler_plan.py [--records 5000000] [--ids 500000] [--repeats 3] [--json FILE]

`plan_seconds(records, ids)` is what bench/data_scale.py imports for its plan_s.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from core.context import BuildContext
from core.data.table import RecordTable


def synthetic_table(records: int, ids: int, categories: int = 6, seed: int = 0) -> RecordTable:
    """`records` records over `ids` identities (each >= 1 image), `categories` categories."""
    if ids > records:
        raise ValueError(f"--ids ({ids}) must not exceed --records ({records})")
    rng = np.random.default_rng(seed)
    extra = rng.multinomial(records - ids, np.full(ids, 1.0 / ids))
    pids = np.repeat(np.arange(ids), 1 + extra)
    rng.shuffle(pids)  # records in no particular order, as a manifest lists them
    zeros = np.zeros(records, dtype=np.int64)
    category_of_identity = np.arange(ids) % categories
    return RecordTable(records=[], source_ids=zeros, sources=["bench"], pids=pids,
                       camids=pids % 6, category_ids=category_of_identity[pids],
                       category_names=[f"category{i}" for i in range(categories)],
                       domain_ids=zeros, domain_names=["bench"])


def _time(make, repeats: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    sampler = make()
    build = time.perf_counter() - start
    times = []
    for epoch in range(repeats):
        start = time.perf_counter()
        plan = sampler.plan_array(epoch) if hasattr(sampler, "plan_array") else sampler.plan(epoch)
        times.append(time.perf_counter() - start)
    return build, min(times), len(plan)


def plan_seconds(records: int = 5_000_000, ids: int = 500_000, sampler: str = "pk", repeats: int = 1,
                 batch_size: int = 64, k: int = 4) -> dict[str, float]:
    """{"build_s", "plan_s", "batches"} of `sampler` ("pk" or "edps") on a synthetic table;
    plan_s is the best of `repeats` epochs."""
    t = synthetic_table(records, ids)
    ctx = BuildContext(train=t, num_identities=ids, category_names=t.category_names)
    if sampler == "pk":
        from core.samplers.identity import PKSampler

        make = lambda: PKSampler(ctx, batch_size=batch_size, k=k)  # noqa: E731
    elif sampler == "edps":
        import warnings

        from reid_edps.sampler import EDPSSampler

        warnings.simplefilter("ignore")
        make = lambda: EDPSSampler(ctx, batch_size=batch_size, k=k)  # noqa: E731
    else:
        raise ValueError(f"sampler must be 'pk' or 'edps', got {sampler!r}")
    build, best, batches = _time(make, repeats)
    return {"build_s": build, "plan_s": best, "batches": batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5_000_000)
    parser.add_argument("--ids", type=int, default=500_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samplers", default="pk,edps")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    out = {}
    print(f"{args.records:,} records, {args.ids:,} identities, batch {args.batch_size}, K = {args.k}\n")
    print("| sampler | build (s) | plan epoch, best of %d (s) | batches |" % args.repeats)
    print("|---|---|---|---|")
    for name in args.samplers.split(","):
        r = plan_seconds(args.records, args.ids, name, args.repeats, args.batch_size, args.k)
        out[name] = r
        print(f"| {name} | {r['build_s']:.3f} | {r['plan_s']:.3f} | {r['batches']:,} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
