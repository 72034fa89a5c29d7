"""Benchmark: evaluation over a gallery of N items stored as a memory-mapped float16 file
(issue 24): the exact protocol out of core (`search: blocked`) and IVF-PQ
(`search: faiss_ivfpq`) with its recall@k against exact search.

Clustered synthetic features (identities with ~10 gallery images, 6 cameras), written in
chunks with `core.evaluation.features.FeatureWriter`; the gallery is never whole in RAM
as float32. Prints seconds and the process's peak resident memory after each step.

    python bench/eval_blocked.py [--gallery 1000000] [--queries 1000] [--dim 128] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from core.evaluation import ReIDEvaluator
from core.evaluation.features import FeatureWriter
from core.interfaces import FeatureSet


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_gallery(path: Path, n: int, dim: int, ids: int, noise: float, seed: int = 0, chunk: int = 100_000):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim)).astype(np.float32)
    pids = rng.integers(0, ids, n)
    writer = FeatureWriter(path, n, dim)
    for s in range(0, n, chunk):
        p = pids[s:s + chunk]
        writer.write(centres[p] + noise * rng.standard_normal((len(p), dim)).astype(np.float32))
    return writer.close(), pids, rng.integers(0, 6, n), centres


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--topk", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.8, help="feature noise (identity centres have std 1)")
    parser.add_argument("--skip-exact", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out: dict[str, float] = {"start_peak_mb": peak_mb()}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        g, g_pids, g_cams, centres = write_gallery(Path(tmp) / "g.npy", args.gallery, args.dim, args.gallery // 10,
                                               args.noise)
        out["write_s"], out["after_write_peak_mb"] = time.perf_counter() - start, peak_mb()
        rng = np.random.default_rng(1)
        q_pids = rng.choice(g_pids, args.queries)
        q = centres[q_pids] + args.noise * rng.standard_normal((args.queries, args.dim)).astype(np.float32)
        query = FeatureSet(torch.from_numpy(q), q_pids, rng.integers(0, 6, args.queries))
        gallery = FeatureSet(torch.from_numpy(np.asarray(g)), g_pids, g_cams)
        if not args.skip_exact:
            start = time.perf_counter()
            exact = ReIDEvaluator(search="blocked", chunk_size=256).evaluate(query, gallery)
            out["blocked_s"], out["blocked_peak_mb"] = time.perf_counter() - start, peak_mb()
            out.update({f"blocked/{k}": v for k, v in exact.items()})
        start = time.perf_counter()
        pq = ReIDEvaluator(search="faiss_ivfpq", topk=args.topk, nprobe=32, recall_queries=200).evaluate(query, gallery)
        out["ivfpq_s"], out["ivfpq_peak_mb"] = time.perf_counter() - start, peak_mb()
        out.update({f"ivfpq/{k}": v for k, v in pq.items()})
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
