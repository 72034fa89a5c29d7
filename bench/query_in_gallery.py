"""Benchmark: the build's 'query image also in the gallery' check
(core.data.protocol_checks.query_paths_in_gallery) on N synthetic records.

A test set of N records in columns, as a manifest reader gives them: `--query-share` of
them queries, the rest gallery, absolute Market-style paths under per-source folders, with
`--overlap` query paths also in the gallery (some written `./`-relative or with a `//`,
which only normalisation finds equal). Prints seconds per call (best of `--repeat`, after
one warm-up), the number found, and the machine; `--json FILE` writes them.
`one_by_one_seconds` is the same check path by path (`os.path.normpath(os.path.abspath(p))`
of every path into two sets: the implementation before issue 24's change, kept for
platforms whose separator is not `/`), timed in the same process.

    nice -n 10 python bench/query_in_gallery.py --rows 2000000 [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def test_set(rows: int, query_share: float, overlap: int, seed: int = 0):
    """(query, gallery) RecordColumns of `rows` records in all (module docstring)."""
    from core.data.layouts.common import columns_of

    rng = np.random.default_rng(seed)
    n_query = int(rows * query_share)
    pids = rng.integers(0, rows // 10 + 1, size=rows)
    cams = rng.integers(0, 15, size=rows)
    root = os.path.join(os.getcwd(), "data")
    names = [f"{root}/src{i % 97:03d}/{'query' if i < n_query else 'test'}/{p:06d}_c{c + 1}s1_{i:08d}_01.jpg"
             for i, (p, c) in enumerate(zip(pids.tolist(), cams.tolist()))]
    query, gallery = names[:n_query], names[n_query:]
    for k, i in enumerate(rng.choice(len(gallery), size=min(overlap, len(gallery), n_query), replace=False)):
        same = query[k]
        gallery[i] = ("./" + os.path.relpath(same) if k % 3 == 1 else
                      same.replace("/src", "//src", 1) if k % 3 == 2 else same)
    return (columns_of(query, pids[:n_query], cams[:n_query], "person", "bench", "query"),
            columns_of(gallery, pids[n_query:], cams[n_query:], "person", "bench", "gallery"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--query-share", type=float, default=0.1)
    parser.add_argument("--overlap", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=str, default="")
    args = parser.parse_args()

    from core.data.protocol_checks import _normalised_one_by_one, query_paths_in_gallery

    t0 = time.perf_counter()
    query, gallery = test_set(args.rows, args.query_share, args.overlap)
    build_s = time.perf_counter() - t0
    found = query_paths_in_gallery(query, gallery)  # warm-up (imports)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        again = query_paths_in_gallery(query, gallery)
        times.append(time.perf_counter() - t0)
        assert again == found
    one_by_one = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        again = sorted(set(_normalised_one_by_one(query)) & set(_normalised_one_by_one(gallery)))
        one_by_one.append(time.perf_counter() - t0)
        assert again == found
    result = {"rows": args.rows, "query": len(query), "gallery": len(gallery), "overlap": args.overlap,
              "found": len(found), "seconds": round(min(times), 3),
              "one_by_one_seconds": round(min(one_by_one), 3), "build_s": round(build_s, 2),
              "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d", time.gmtime())}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
