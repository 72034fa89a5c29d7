"""Benchmark: data at scale (issue 24) -- loading, caching and sharing a record table of
N images, against today's list-of-Records path.

Writes a synthetic manifest of N rows shaped like a multi-source ReID training set (~10
images per identity, 6-20 cameras per source, several categories, Market-style file
names under per-source folders; 80% of identities train, the rest query/gallery with one
query per identity and camera), then measures, each phase in a fresh process:

- load_s: first load (pyarrow CSV parse + checks + cache write + the train RecordTable),
- cached_load_s: the same with the cache present (memory-mapped Arrow IPC file),
- table_mb: bytes held by the columns (all splits); rss_mb of the loading process,
- worker_pss_mb: PSS (/proc/<pid>/smaps_rollup) of each of 4 DataLoader workers reading
  the table with image decoding stubbed out, and worker_pss_added_mb: the same minus the
  workers' PSS over a 1,000-row table. PSS splits the pages several processes share
  among them, so a worker's PSS includes a fifth of the table it reads but does not
  copy; worker_added_mb is what each worker adds to the machine: (PSS of the main
  process and the 4 workers after) - (PSS of the main process, table touched, before)
  divided by 4 (PSS sums to the group's real memory; each worker reads every page of
  the table when it starts, so this is after the workers touched all of it; the raw
  main_pss_before/after_workers_mb and group_pss_after_mb are in the JSON), and
  worker_private_mb its private pages,
- loader_images_per_s: throughput of those 4 workers (batches of 64 from PK batches),
- plan_s: the PK sampler (core.samplers.identity.PKSampler) building one epoch's plan,
- legacy_*: today's path at min(N, 1M) rows: csv module -> Record objects -> arrays.

    nice -n 10 python bench/data_scale.py --rows 1000000 [--json FILE] [--legacy-rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CATEGORIES = ("person", "vehicle", "animal", "ship")


def write_manifest(path: Path, rows: int, seed: int = 0) -> dict:
    """A CSV manifest of `rows` images (module docstring)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(seed)
    sizes = np.clip(rng.poisson(10, size=rows // 5), 2, None)
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), rows) + 1]
    sizes[-1] -= sizes.sum() - rows
    sizes = sizes[sizes > 0]
    n_ids = sizes.size
    identity = np.repeat(np.arange(n_ids), sizes)
    # sources of ~20k identities, each with its own camera count, category and domain
    source_of_id = np.arange(n_ids) // 20000
    n_sources = int(source_of_id.max()) + 1
    cams_of_source = rng.integers(6, 21, size=n_sources)
    cat_of_source = rng.integers(0, len(CATEGORIES), size=n_sources)
    source = source_of_id[identity]
    camid = (rng.random(rows) * cams_of_source[source]).astype(np.int64)
    pid = identity - source * 20000 + 1
    test_id = (np.arange(n_ids) % 20000) >= 16000
    first = np.r_[True, identity[1:] != identity[:-1]]
    split = np.where(~test_id[identity], "train", np.where(first, "query", "gallery"))
    frame = rng.integers(0, 999999, size=rows)
    names = [f"src{s:03d}/{'train' if sp == 'train' else 'test'}/{p:05d}_c{c + 1}s1_{f:06d}_01.jpg"
             for s, sp, p, c, f in zip(source.tolist(), split.tolist(), pid.tolist(), camid.tolist(),
                                       frame.tolist())]
    cats = np.asarray(CATEGORIES)[cat_of_source[source]]
    table = pa.table({
        "path": pa.array(names, pa.large_string()), "pid": pa.array(pid + source * 100000),
        "camid": pa.array(camid), "category": pa.array(cats), "domain": pa.array([f"src{s:03d}" for s in source]),
        "split": pa.array(split), "clothes_id": pa.array(rng.integers(0, 5, size=rows)),
    })
    pcsv.write_csv(table, path)
    return {"rows": rows, "identities": int(n_ids), "sources": n_sources, "file_mb": path.stat().st_size / 2**20}


# -- measurements, each in its own process -----------------------------------------------

def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _pss_mb(pid: int) -> tuple[float, float]:
    """(PSS, private) of a process in MB, from /proc/<pid>/smaps_rollup."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                values[parts[0].rstrip(":")] = int(parts[1])
    return values["Pss"] / 1024, (values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)) / 1024


def _load(manifest: str):
    from core.data.manifest import ManifestDataset
    from core.data.table import RecordTable

    ds = ManifestDataset(manifest)
    train = RecordTable.build([("bench", ds.records("train"))], relabel=True)
    tests = [RecordTable.build([("bench", ds.records(s))], relabel=False, category_names=train.category_names)
             for s in ("query", "gallery")]
    return ds, train, tests


def phase_load(manifest: str) -> dict:
    import core.data.manifest  # noqa: F401  imports (torch, pyarrow) are not the load
    import core.data.table  # noqa: F401
    import pyarrow.csv  # noqa: F401

    before = _rss_mb()
    start = time.perf_counter()
    ds, train, tests = _load(manifest)
    seconds = time.perf_counter() - start
    added = _rss_mb() - before
    # the manifest's columns once (each split's table is a zero-copy slice of them), plus
    # each table's own arrays (source ids, pids, category and domain ids; camids are shared)
    table_bytes = ds.columns.nbytes + sum(a.nbytes for t in [train, *tests]
                                          for a in (t.source_ids, t.pids, t.category_ids, t.domain_ids))
    return {"seconds": seconds, "table_mb": table_bytes / 2**20, "rss_mb": _rss_mb(), "rss_added_mb": added,
            "train_rows": len(train)}


class _StubDataset:
    """Decoding stubbed out: a constant 8x4 image, so only the table's reads remain."""

    def load_image(self, record):
        return np.zeros((8, 4, 3), dtype=np.uint8)

    def sample_extras(self, record):
        return {}


def phase_workers(manifest: str, batches: int) -> dict:
    import torch

    from core.context import BuildContext
    from core.data.loading import ImageSamples, collate
    from core.samplers.identity import PKSampler

    ds, train, _ = _load(manifest)
    # every page of the table in the main process first, so that what the workers add
    # below is their own cost, not the table's first read from disk
    touched = _touch(ds.columns)
    ctx = BuildContext.from_table(train, feature_dim=8)
    start = time.perf_counter()
    sampler = PKSampler(ctx, batch_size=64, k=4, seed=0)
    plan = sampler.plan(0)
    plan_s = time.perf_counter() - start
    samples = ImageSamples(train, [_StubDataset()], transform=None)
    main_before = _pss_mb(os.getpid())[0]  # after the plan: its lists are the main process's own
    batch_list = (plan * (1 + (batches + 20) // max(len(plan), 1)))[: batches + 20]
    loader = torch.utils.data.DataLoader(samples, batch_sampler=batch_list, num_workers=4,
                                         collate_fn=collate, persistent_workers=False,
                                         worker_init_fn=lambda _: _touch(ds.columns))
    it = iter(loader)
    for _ in range(20):  # warm-up: workers started, their first pages touched
        next(it)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        images += len(next(it))
    seconds = time.perf_counter() - start
    workers = [w.pid for w in it._workers]
    pss = [_pss_mb(pid) for pid in workers]
    main_after = _pss_mb(os.getpid())[0]
    del it
    # PSS charges each process its share of the pages it maps: the table's pages, read by
    # all five processes, are split five ways. What the workers add to the machine is the
    # sum of all five PSS after minus the main process's PSS before they started.
    added = (main_after + sum(p for p, _ in pss) - main_before) / len(pss)
    return {"touched": touched, "worker_added_mb": added, "main_pss_before_mb": main_before,
            "main_pss_after_mb": main_after, "group_pss_after_mb": main_after + sum(p for p, _ in pss),
            "plan_s": plan_s, "plan_batches": len(plan), "images_per_s": images / seconds,
            "worker_pss_mb": [p for p, _ in pss], "worker_private_mb": [q for _, q in pss],
            "main_pss_mb": _pss_mb(os.getpid())[0]}


def _touch(columns) -> int:
    """Read one byte of every page of the table's columns (every page mapped and read in
    the calling process; a loader worker calls it at start, so that its PSS is measured
    after it has touched the whole table, the worst case of a long epoch)."""
    return sum(int(np.asarray(a).view(np.uint8)[::4096].sum()) for a in _buffers(columns))


def _buffers(columns):
    yield from (columns.path.offsets, columns.path.data, columns.pid, columns.camid)
    for col in columns.extras.values():
        for part in (col.values, col.valid, col.offsets):
            if part is None:
                continue
            if hasattr(part, "data") and hasattr(part, "offsets"):
                yield from (part.offsets, part.data)
            elif isinstance(part, np.ndarray) and part.dtype != object:
                yield part


def phase_legacy(manifest: str) -> dict:
    """Today's path: the csv module -> one Record per row -> the table's arrays (the code
    before issue 24, kept as ManifestDataset's row reader)."""
    from core.data.manifest import ManifestDataset

    import pyarrow.csv  # noqa: F401  what the columnar phase imported too (same RSS baseline)

    before = _rss_mb()
    start = time.perf_counter()
    ds = ManifestDataset.__new__(ManifestDataset)
    ds.path, ds.root = Path(manifest), Path(manifest).parent
    records = [ds._record(line, row) for line, row in ds._rows()]
    train = [r for r in records if r.split == "train"]
    labels: dict = {}
    cats = sorted({r.category for r in train})
    arrays = (np.asarray([labels.setdefault((0, r.pid), len(labels)) for r in train]),
              np.asarray([r.camid for r in train]), np.asarray([cats.index(r.category) for r in train]))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_added_mb": _rss_mb() - before, "rows": len(records), "arrays": len(arrays)}


def _run_phase(name: str, manifest: str, env: dict, extra: list[str] = ()) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--manifest", manifest, *extra],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"phase {name} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--legacy-rows", type=int, default=1_000_000, help="rows of the old path (0: skip)")
    ap.add_argument("--batches", type=int, default=300, help="loader batches timed")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--workdir", metavar="DIR", help="where manifests and the cache go (default: a temp dir)")
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--manifest", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        result = {"load": lambda: phase_load(args.manifest),
                  "workers": lambda: phase_workers(args.manifest, args.batches),
                  "legacy": lambda: phase_legacy(args.manifest)}[args.phase]()
        print(json.dumps(result))
        return 0

    work = Path(args.workdir or tempfile.mkdtemp(prefix="data_scale-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, REID_CORE_CACHE=str(work / "cache"), REID_CORE_CACHE_MIN_ROWS="0",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    manifest = work / f"manifest-{args.rows}.csv"
    start = time.perf_counter()
    info = write_manifest(manifest, args.rows)
    info["write_s"] = time.perf_counter() - start
    for f in (work / "cache").glob("*.arrow") if (work / "cache").is_dir() else []:
        f.unlink()
    first = _run_phase("load", str(manifest), env)
    cached = _run_phase("load", str(manifest), env)
    workers = _run_phase("workers", str(manifest), env, ["--batches", str(args.batches)])
    tiny = work / "manifest-tiny.csv"
    write_manifest(tiny, 1000)
    base = _run_phase("workers", str(tiny), env, ["--batches", "50"])
    result = {
        "rows": args.rows, "manifest": info, "cpus": os.cpu_count(),
        "load_s": first["seconds"], "cached_load_s": cached["seconds"], "table_mb": first["table_mb"],
        "rss_added_mb_first": first["rss_added_mb"], "rss_added_mb_cached": cached["rss_added_mb"],
        "worker_pss_mb": workers["worker_pss_mb"], "worker_private_mb": workers["worker_private_mb"],
        "worker_pss_tiny_table_mb": base["worker_pss_mb"],
        "worker_pss_added_mb": [a - b for a, b in zip(workers["worker_pss_mb"], base["worker_pss_mb"])],
        "worker_added_mb": workers["worker_added_mb"], "worker_added_tiny_table_mb": base["worker_added_mb"],
        "main_pss_before_workers_mb": workers["main_pss_before_mb"],
        "main_pss_after_workers_mb": workers["main_pss_after_mb"],
        "group_pss_after_mb": workers["group_pss_after_mb"],
        "main_pss_mb": workers["main_pss_mb"],
        "loader_images_per_s": workers["images_per_s"], "plan_s": workers["plan_s"],
        "plan_batches": workers["plan_batches"],
    }
    if args.legacy_rows:
        legacy_manifest = manifest
        if args.legacy_rows != args.rows:
            legacy_manifest = work / f"manifest-{args.legacy_rows}.csv"
            write_manifest(legacy_manifest, args.legacy_rows)
        legacy = _run_phase("legacy", str(legacy_manifest), env)
        env_off = dict(env, REID_CORE_CACHE="off")
        new_same = _run_phase("load", str(legacy_manifest), env_off)
        result.update({"legacy_rows": args.legacy_rows, "legacy_load_s": legacy["seconds"],
                       "legacy_rss_added_mb": legacy["rss_added_mb"],
                       "columnar_load_s_same_rows_no_cache": new_same["seconds"],
                       "columnar_rss_added_mb_same_rows": new_same["rss_added_mb"]})
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
